"""The generated operator manifests: least privilege, hardened, and committed without drift."""

from __future__ import annotations

from neuraxis.operator.builders.accounts import (
    AUTH_DELEGATOR_ROLE,
    SPARK_DRIVER_ROLE,
    spark_driver_rules,
)
from neuraxis.operator.manifests import build_manifests, cluster_role_rules, render_deploy_dir
from tests.conftest import REPO


def test_cluster_role_is_least_privilege() -> None:
    for rule in cluster_role_rules():
        assert (
            "*" not in rule["verbs"]
            and "*" not in rule["resources"]
            and "*" not in rule["apiGroups"]
        )
        if "secrets" in rule["resources"]:
            # It writes the scoped lake credentials it mints and a federated run's TLS Secret,
            # and never reads a Secret back.
            assert rule["resources"] == ["secrets"]
            assert sorted(rule["verbs"]) == ["create", "patch"], "the operator never reads Secrets"
        # Children are garbage-collected through owners; the deletions are a superseded run's
        # Job (a new run stops the old one first) and a finished or superseded federated run's
        # servers (Deployments) and their NetworkPolicies.
        if "delete" in rule["verbs"]:
            assert (rule["apiGroups"], rule["resources"]) in [
                (["batch"], ["jobs"]),
                (["apps"], ["deployments"]),
                (["networking.k8s.io"], ["networkpolicies"]),
            ], rule


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


def test_operator_may_bind_only_the_spark_driver_and_auth_delegator_roles() -> None:
    rbac = [r for r in cluster_role_rules() if r["apiGroups"] == ["rbac.authorization.k8s.io"]]
    assert {tuple(r["resources"]): r.get("resourceNames") for r in rbac} == {
        ("rolebindings",): None,
        ("clusterrolebindings",): None,
        ("clusterroles",): [SPARK_DRIVER_ROLE, AUTH_DELEGATOR_ROLE],
    }
    verbs = {r["resources"][0]: r["verbs"] for r in rbac}
    # Bindings are watched (a deleted one is made again), never updated or deleted.
    assert verbs == {
        "rolebindings": ["get", "list", "watch", "create"],
        "clusterrolebindings": ["get", "list", "watch", "create"],
        "clusterroles": ["get", "bind"],
    }
    [spark_role] = [
        m
        for m in build_manifests()
        if m["kind"] == "ClusterRole" and m["metadata"]["name"] == SPARK_DRIVER_ROLE
    ]
    assert spark_role["rules"] == spark_driver_rules()


def test_no_kuberay_integration_is_left() -> None:
    groups = {g for rule in cluster_role_rules() for g in rule["apiGroups"]}
    assert "ray.io" not in groups


def test_two_replicas_elect_a_leader_with_a_lease_in_their_own_namespace() -> None:
    manifests = build_manifests()
    [deploy] = [m for m in manifests if m["kind"] == "Deployment"]
    assert deploy["spec"]["replicas"] == 2
    env = {e["name"]: e for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["NEURAXIS_LEADER_ELECTION"]["value"] == "true"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    [role] = [m for m in manifests if m["kind"] == "Role"]
    [binding] = [m for m in manifests if m["kind"] == "RoleBinding"]
    assert role["metadata"]["namespace"] == deploy["metadata"]["namespace"]
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
         "verbs": ["get", "create", "update"]}
    ]  # fmt: skip
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert all("leases" not in r["resources"] for r in cluster_role_rules())
    [budget] = [m for m in manifests if m["kind"] == "PodDisruptionBudget"]
    assert budget["spec"]["minAvailable"] == 1
