"""ServiceAccount-token auth against the real kube-apiserver: tokens from the TokenRequest API,
reviewed through the TokenReview API by an account bound as the operator binds a predictor's
(the built ClusterRoleBinding to system:auth-delegator), with audiences and allowed users."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from neuraxis.operator.builders.accounts import PREDICTOR_ACCOUNT, predictor_accounts
from neuraxis.workloads.serve.auth import AuthError, KubeTokenReviewer, TokenReviewAuth
from tests.cluster.conftest import Cluster

AUDIENCE = "neuraxis-test"


def _token(cluster: Cluster, namespace: str, account: str, audience: str | None = None) -> str:
    """A token for `account` from the TokenRequest API (what a projected volume holds)."""
    args = ["create", "token", account, f"--namespace={namespace}", "--duration=10m"]
    if audience:
        args.append(f"--audience={audience}")
    return cluster.kubectl(*args).strip()


def _reviewer(cluster: Cluster, token: str, tmp_path: Path) -> KubeTokenReviewer:
    """The predictor's reviewer, as in a pod: its own token file and the cluster's CA."""
    config: dict[str, Any] = yaml.safe_load(cluster.kubeconfig.read_text())
    server = config["clusters"][0]["cluster"]
    ca_file: Path | None = None
    if "certificate-authority-data" in server:
        ca_file = tmp_path / "ca.crt"
        ca_file.write_bytes(base64.b64decode(server["certificate-authority-data"]))
    elif "certificate-authority" in server:
        ca_file = Path(server["certificate-authority"])
    token_file = tmp_path / "token"
    token_file.write_text(token)
    return KubeTokenReviewer(server["server"], token_file, ca_file)


def _check(auth: TokenReviewAuth, token: str) -> str | AuthError:
    return asyncio.run(auth.authenticate({"authorization": f"Bearer {token}"}, 0.0))


def test_tokens_are_reviewed_by_the_api_server(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    for name in ("caller", "other"):
        cluster.kubectl("create", "serviceaccount", name, f"--namespace={namespace}")
    account, binding = predictor_accounts(namespace)
    cluster.apply(account, namespace)
    reviewer = _reviewer(cluster, _token(cluster, namespace, PREDICTOR_ACCOUNT), tmp_path)
    caller = f"system:serviceaccount:{namespace}:caller"

    # Before the binding the predictor may not review tokens: no answer, 503 (not 401).
    unbound = TokenReviewAuth(reviewer, (AUDIENCE,))
    refused = _check(unbound, _token(cluster, namespace, "caller", AUDIENCE))
    assert isinstance(refused, AuthError) and refused.status == 503, refused

    cluster.kubectl("apply", "--filename=-", input_text=json.dumps(binding))
    try:
        auth = TokenReviewAuth(reviewer, (AUDIENCE,), frozenset({caller}))
        good = _token(cluster, namespace, "caller", AUDIENCE)
        deadline_checks = 0
        result = _check(auth, good)
        while isinstance(result, AuthError) and result.status == 503 and deadline_checks < 50:
            # RBAC caches take a moment to see the new binding.
            deadline_checks += 1
            asyncio.run(asyncio.sleep(0.2))
            result = _check(auth, good)
        assert result == caller

        forbidden = _check(auth, _token(cluster, namespace, "other", AUDIENCE))
        assert isinstance(forbidden, AuthError) and forbidden.status == 403
        assert "other" in forbidden.reason

        wrong_audience = _check(auth, _token(cluster, namespace, "caller", "someone-else"))
        assert isinstance(wrong_audience, AuthError) and wrong_audience.status == 401
        forged = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
        invalid = _check(auth, forged)
        assert isinstance(invalid, AuthError) and invalid.status == 401

        # Any authenticated identity when no users are listed.
        anyone = TokenReviewAuth(reviewer, (AUDIENCE,))
        other = f"system:serviceaccount:{namespace}:other"
        assert _check(anyone, _token(cluster, namespace, "other", AUDIENCE)) == other
    finally:
        cluster.kubectl("delete", "clusterrolebinding", binding["metadata"]["name"])


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # httpx honours proxy variables; the API server is local.
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
