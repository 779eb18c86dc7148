"""The generated operator manifests: least privilege, hardened, and committed without drift."""

from __future__ import annotations

from neuraxis.operator.manifests import build_manifests, cluster_role_rules, render_deploy_dir
from tests.conftest import REPO


def test_cluster_role_is_least_privilege() -> None:
    for rule in cluster_role_rules():
        assert (
            "*" not in rule["verbs"]
            and "*" not in rule["resources"]
            and "*" not in rule["apiGroups"]
        )
        assert "secrets" not in rule["resources"], "the operator never reads Secrets"
        assert "delete" not in rule["verbs"], "children are garbage-collected through owners"


def test_deployment_is_hardened() -> None:
    [deploy] = [m for m in build_manifests() if m["kind"] == "Deployment"]
    pod = deploy["spec"]["template"]["spec"]
    container = pod["containers"][0]
    ctx = container["securityContext"]
    assert ctx["runAsNonRoot"] and ctx["readOnlyRootFilesystem"]
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["resources"]["limits"] and container["resources"]["requests"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert not container["image"].endswith(":latest")


def test_committed_deploy_dir_matches_the_generator() -> None:
    deploy = REPO / "operator" / "deploy"
    for name, content in render_deploy_dir().items():
        assert (deploy / name).read_text() == content, (
            f"run `neuraxis operator manifests --out {deploy}`"
        )
