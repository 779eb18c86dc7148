"""The auth settings of the examples in the pods the operator builds: flags, the API-key Secret
as an optional read-only volume, the token reviewer's account and binding, and the condition
a missing Secret becomes."""

from __future__ import annotations

from typing import Any

from neuraxis.crds import EdgeDeployment, ModelVersion
from neuraxis.crds.common import ServingAuth
from neuraxis.operator.builders import auth as operator_auth
from neuraxis.operator.builders.accounts import (
    AUTH_DELEGATOR_ROLE,
    PREDICTOR_ACCOUNT,
    accounts_for,
)
from neuraxis.operator.builders.auth import API_KEYS_MOUNT, auth_args
from neuraxis.operator.builders.edge import build_edge_daemon_sets
from neuraxis.operator.builders.modelversion import ClusterFeatures, build_serving_children
from neuraxis.operator.informer import keep_pod
from neuraxis.operator.outcomes import auth_refusal
from neuraxis.operator.settings import OperatorSettings
from neuraxis.resources import load_resources
from neuraxis.workloads.result import compact_json
from neuraxis.workloads.serve import auth as workload_auth
from tests.conftest import EXAMPLES

SETTINGS = OperatorSettings()

DIGEST = "sha256:" + "cd" * 32  # the bundle every agent is pinned to


def _example(folder: str, kind: str) -> Any:
    [res] = [r for r in load_resources([EXAMPLES / folder]) if r.kind == kind]
    res.metadata.namespace = "ml"
    res.metadata.uid = "3f2a9c1b-7d4e-4f60-9a1b-2c3d4e5f6a7b"
    res.metadata.generation = 1
    return res


def _pod_spec(children: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [child] = [c for c in children if c["kind"] == kind]
    spec: dict[str, Any] = child["spec"]["template"]["spec"]
    return spec


def _flag(command: list[str], flag: str) -> list[str]:
    return [command[i + 1] for i, arg in enumerate(command) if arg == flag]


def test_api_keys_predictor_mounts_the_secret_and_passes_the_limits() -> None:
    mv: ModelVersion = _example("smart-manufacturing", "ModelVersion")
    assert mv.spec.serving is not None
    children = build_serving_children(mv, mv.spec.serving, "s3://l/m", SETTINGS, ClusterFeatures())
    pod = _pod_spec(children, "Deployment")
    [container] = pod["containers"]
    command = container["command"]
    assert _flag(command, "--auth-mode") == ["apiKeys"]
    assert _flag(command, "--api-keys-dir") == [API_KEYS_MOUNT]
    assert _flag(command, "--rate-limit-rps") == ["200"]
    assert _flag(command, "--rate-limit-burst") == ["400"]
    [volume] = [v for v in pod["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == "anomaly-detector-api-keys"
    assert volume["secret"]["optional"] is True  # the server reports a missing Secret
    [mount] = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert mount == {"name": volume["name"], "mountPath": API_KEYS_MOUNT, "readOnly": True}
    assert pod["automountServiceAccountToken"] is False  # API keys need no API access
    # The probes stay on the open routes.
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert PREDICTOR_ACCOUNT not in {a["metadata"]["name"] for a in accounts_for(mv, SETTINGS)}


def test_service_account_token_predictor_may_review_tokens() -> None:
    mv: ModelVersion = _example("smart-healthcare", "ModelVersion")
    assert mv.spec.serving is not None and mv.spec.serving.auth is not None
    mv.spec.serving.auth.audiences = ["neuraxis"]
    mv.spec.serving.auth.allowed_users = ["system:serviceaccount:apps:dash"]
    children = build_serving_children(mv, mv.spec.serving, "s3://l/m", SETTINGS, ClusterFeatures())
    pod = _pod_spec(children, "Deployment")
    command = pod["containers"][0]["command"]
    assert _flag(command, "--auth-mode") == ["serviceAccountToken"]
    assert _flag(command, "--token-audience") == ["neuraxis"]
    assert _flag(command, "--allowed-user") == ["system:serviceaccount:apps:dash"]
    assert _flag(command, "--rate-limit-burst") == ["50"]  # default: the rate
    assert pod["serviceAccountName"] == PREDICTOR_ACCOUNT
    assert pod["automountServiceAccountToken"] is True
    accounts = {(a["kind"], a["metadata"]["name"]): a for a in accounts_for(mv, SETTINGS)}
    account = accounts[("ServiceAccount", PREDICTOR_ACCOUNT)]
    assert account["metadata"]["namespace"] == "ml"
    binding = accounts[("ClusterRoleBinding", f"{PREDICTOR_ACCOUNT}-ml")]
    assert binding["roleRef"]["name"] == AUTH_DELEGATOR_ROLE
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": PREDICTOR_ACCOUNT, "namespace": "ml"}
    ]


def test_edge_daemon_sets_get_the_keys_and_the_flags() -> None:
    ed: EdgeDeployment = _example("smart-manufacturing", "EdgeDeployment")
    sets = build_edge_daemon_sets(
        ed, "s3://l/edge/b", ["n1", "n2"], SETTINGS, canary_ready=True, bundle_digest=DIGEST
    )
    assert sets
    for daemon_set in sets:
        pod = daemon_set["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert _flag(container["command"], "--auth-mode") == ["apiKeys"]
        assert _flag(container["command"], "--api-keys-dir") == [API_KEYS_MOUNT]
        [volume] = [v for v in pod["volumes"] if "secret" in v]
        assert volume["secret"]["secretName"] == "anomaly-detector-edge-keys"
        assert any(m["mountPath"] == API_KEYS_MOUNT for m in container["volumeMounts"])


def test_auth_none_is_passed_explicitly_and_mounts_nothing() -> None:
    ed: EdgeDeployment = _example("smart-healthcare", "EdgeDeployment")
    [daemon_set, *_] = build_edge_daemon_sets(
        ed, "s3://l/edge/b", ["n1"], SETTINGS, canary_ready=True, bundle_digest=DIGEST
    )
    pod = daemon_set["spec"]["template"]["spec"]
    assert _flag(pod["containers"][0]["command"], "--auth-mode") == ["none"]
    assert not [v for v in pod["volumes"] if "secret" in v]
    assert auth_args(ServingAuth(mode="none")) == ["--auth-mode", "none"]


def _refusing_pod(reason: str) -> dict[str, Any]:
    message = compact_json({"outcome": "Failed", "reason": reason, "message": "no keys"})
    terminated = {"terminated": {"exitCode": 2, "message": message}}
    return keep_pod(
        {
            "metadata": {"name": "p", "namespace": "ml", "labels": {}},
            "status": {
                "phase": "Running",
                "containerStatuses": [{"name": "main", "lastState": terminated}],
            },
        }
    )


def test_a_missing_key_secret_is_read_from_the_pods_and_named_in_the_message() -> None:
    assert auth_refusal([_refusing_pod("ApiKeysMissing")]) == "ApiKeysMissing"
    assert auth_refusal([_refusing_pod("ArtifactChanged")]) is None
    assert auth_refusal([]) is None
    auth = ServingAuth.model_validate({"mode": "apiKeys", "secretRef": {"name": "keys"}})
    message = operator_auth.missing_keys_message(auth, "ml")
    assert "ml/keys" in message and "kubectl create secret generic keys" in message


def test_refusal_reasons_are_the_workloads() -> None:
    assert operator_auth.API_KEYS_MISSING == workload_auth.API_KEYS_MISSING
    assert operator_auth.AUTH_SETUP_FAILED == workload_auth.AUTH_SETUP_FAILED
