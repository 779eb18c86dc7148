"""Canary rollback end to end against the real API server: the operator (a subprocess) serves a
stable version and a canary on KWOK nodes, reads their /metrics (real inference servers on
loopback: KWOK pods have none, so `neuraxis.dev/kwok-metrics-url` points each version's pods
at one), rolls the failing canary back (no canary pods in replica mode, condition
CanaryRolledBack with the figures) and keeps it so until the spec changes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from neuraxis.lake import Lake
from neuraxis.operator.canary import KWOK_METRICS_URL
from neuraxis.operator.children import POD_ANNOTATIONS
from tests.cluster.conftest import Cluster
from tests.cluster.operator_fixtures import (
    TERMINATION_ANNOTATION,
    condition,
    get,
    running_operator,
    wait_for,
)
from tests.cluster.test_operator_requests import EVAL_OK, model_version
from tests.serve.conftest import REPO, ServerProcess, TinyClassifier, free_port, write_model
from tests.serve.test_canary_analysis import BROKEN, GOOD, DefectiveClassifier

SERVE = "neuraxis.workloads.serve"


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """A stable (v1) and a defective canary (v2) inference server on loopback."""
    lake = Lake(str(tmp_path / "lake"))
    write_model(lake, "models/v1", TinyClassifier(seed=1), "v1")
    write_model(lake, "models/v2", DefectiveClassifier(seed=2), "v2")
    started = []
    for version in ("v1", "v2"):
        port, log = free_port(), tmp_path / f"{version}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", SERVE, "--model", f"file://{tmp_path}/lake/models/{version}",
                 "--name", "tiny", "--port", str(port)],
                cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )  # fmt: skip
        started.append(ServerProcess(proc, port, log))
    for server in started:
        server.wait_ready()
    yield started[0], started[1]
    for server in started:
        server.stop(signal.SIGKILL)


def predict(server: ServerProcess, rows: list[list[float]]) -> int:
    body = {"instances": rows}
    with httpx.Client(base_url=server.url, timeout=30) as client:  # the server closes on a 5xx
        return client.post("/v1/models/tiny:predict", json=body).status_code


def metrics_from(doc: dict[str, Any], server: ServerProcess) -> dict[str, Any]:
    """The version's (fake) pods read their metrics from `server`."""
    doc["metadata"]["annotations"][POD_ANNOTATIONS] = json.dumps(
        {TERMINATION_ANNOTATION: json.dumps(EVAL_OK), KWOK_METRICS_URL: f"{server.url}/metrics"}
    )
    return doc


def test_a_failing_canary_is_rolled_back_until_the_spec_changes(
    cluster: Cluster,
    namespace: str,
    tmp_path: Path,
    servers: tuple[ServerProcess, ServerProcess],
) -> None:
    ns = namespace
    stable_server, canary_server = servers
    stable = metrics_from(model_version("stable-v1"), stable_server)
    stable["spec"]["stage"] = "production"
    analysis = {"maxErrorRatioIncrease": 0.05, "minRequests": 40, "intervalSeconds": 5}
    canary_spec = {"trafficPercent": 10, "stableRef": {"name": "stable-v1"}, "analysis": analysis}
    canary = metrics_from(model_version("canary-v2", canary=canary_spec), canary_server)

    def canary_condition() -> dict[str, Any] | None:
        return condition(get(cluster, "modelversions", "canary-v2", ns), "Canary")

    def canary_replicas() -> int:
        deployment = get(cluster, "deployments", "canary-v2-predictor", ns) or {}
        return int(deployment.get("spec", {}).get("replicas", -1))

    with running_operator(cluster, ns, tmp_path, fake_nodes=True) as op:
        cluster.apply(stable, ns)
        cluster.apply(canary, ns)
        pending = wait_for(
            lambda: (c := canary_condition()) and c["reason"] == "CanaryAnalysisPending" and c,
            "the analysis to wait for requests",
            timeout=120,
            op=op,
        )
        assert "waiting for 40 requests" in pending["message"]
        assert canary_replicas() == 1  # 10% next to 2 stable pods, by replicas
        split = get(cluster, "modelversions", "canary-v2", ns)["status"]["trafficSplit"]  # type: ignore[index]
        assert split["mode"] == "replicas" and "no Gateway API" in split["message"]

        for i in range(45):
            assert predict(stable_server, GOOD) == 200
            assert predict(canary_server, BROKEN if i % 3 == 0 else GOOD) in (200, 500)
        rolled = wait_for(
            lambda: (c := canary_condition()) and c["reason"] == "CanaryRolledBack" and c,
            "the canary to be rolled back",
            timeout=60,
            op=op,
        )
        # Judged as soon as minRequests were in, possibly while the traffic still ran.
        assert rolled["status"] == "False" and "> 0.05 (canary: 4" in rolled["message"]
        wait_for(lambda: canary_replicas() == 0, "no canary pods", op=op)

        def warned() -> bool:
            events = cluster.kubectl_json(
                "get", "events", "--namespace", ns, "--field-selector", "reason=CanaryRolledBack"
            )["items"]
            return any(
                e["type"] == "Warning" and e["involvedObject"]["name"] == "canary-v2"
                for e in events
            )

        wait_for(warned, "a Warning event CanaryRolledBack", op=op)
        body = get(cluster, "modelversions", "canary-v2", ns) or {}
        assert body["status"]["phase"] == "Approved"
        split = body["status"]["trafficSplit"]
        assert (split["canaryPercent"], split["rolledBack"]) == (0, True)
        assert 40 <= split["canary"]["requests"] <= 45 and split["canary"]["errorRatio"] > 0.3
        assert split["stable"]["requests"] >= 80 and split["stable"]["errorRatio"] == 0.0

        # The canary's figures recover, yet the same generation stays rolled back.
        for _ in range(600):
            assert predict(canary_server, GOOD) == 200
        time.sleep(12)  # two intervals, four resyncs
        assert (canary_condition() or {}).get("reason") == "CanaryRolledBack"
        assert canary_replicas() == 0

        # A new generation is judged again (15 errors in 645 requests: within 0.05).
        cluster.kubectl(
            "patch", "modelversion", "canary-v2", "--namespace", ns, "--type", "merge",
            "--patch", json.dumps({"spec": {"serving": {"canary": {"trafficPercent": 20}}}}),
        )  # fmt: skip
        wait_for(
            lambda: (canary_condition() or {}).get("reason") == "CanaryHealthy",
            "the new generation to be judged healthy",
            timeout=60,
            op=op,
        )
        wait_for(lambda: canary_replicas() == 1, "the canary's pods back", op=op)


# The Gateway API's HTTPRoute kind, registered for one test: the API server then serves
# `gateway.networking.k8s.io/v1` HTTPRoute as in a cluster with a Gateway implementation (no
# controller here: the test checks what the operator asks for, not how a Gateway routes).
HTTPROUTE_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {
        "name": "httproutes.gateway.networking.k8s.io",
        # A *.k8s.io group needs it; the Gateway API's own CRDs carry their approval this way.
        "annotations": {"api-approved.kubernetes.io": "https://github.com/kubernetes-sigs/gateway-api/pull/2466"},
    },
    "spec": {
        "group": "gateway.networking.k8s.io",
        "names": {"kind": "HTTPRoute", "listKind": "HTTPRouteList", "plural": "httproutes",
                  "singular": "httproute"},
        "scope": "Namespaced",
        "versions": [{
            "name": "v1", "served": True, "storage": True,
            "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            }}},
        }],
    },
}  # fmt: skip


@pytest.fixture
def gateway_api(cluster: Cluster) -> Iterator[None]:
    cluster.kubectl("apply", "-f", "-", input_text=json.dumps(HTTPROUTE_CRD))
    try:
        cluster.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s",
            "crd/httproutes.gateway.networking.k8s.io",
        )  # fmt: skip
        yield
    finally:
        cluster.kubectl("delete", "crd", "httproutes.gateway.networking.k8s.io", "--wait=true")


def test_the_route_attaches_to_the_gateway_and_a_rollback_sets_its_weight_to_zero(
    cluster: Cluster,
    namespace: str,
    tmp_path: Path,
    servers: tuple[ServerProcess, ServerProcess],
    gateway_api: None,
) -> None:
    ns = namespace
    stable_server, canary_server = servers
    stable = metrics_from(model_version("stable-v1"), stable_server)
    stable["spec"]["stage"] = "production"
    analysis = {"maxErrorRatioIncrease": 0.05, "minRequests": 30, "intervalSeconds": 5}
    canary_spec = {"trafficPercent": 10, "stableRef": {"name": "stable-v1"}, "analysis": analysis}
    canary = metrics_from(model_version("canary-v2", canary=canary_spec), canary_server)

    def weights() -> list[tuple[str, int]] | None:
        route = get(cluster, "httproutes", "anomaly-detector-canary", ns)
        if route is None:
            return None
        backends = route["spec"]["rules"][0]["backendRefs"]
        return [(b["name"], b["weight"]) for b in backends]

    env = {"NEURAXIS_GATEWAY": "infra/main-gw/http"}
    with running_operator(cluster, ns, tmp_path, env, fake_nodes=True) as op:
        cluster.apply(stable, ns)
        cluster.apply(canary, ns)
        wait_for(weights, "the canary HTTPRoute", timeout=120, op=op)
        assert weights() == [("stable-v1-predictor", 90), ("canary-v2-predictor", 10)]
        route = get(cluster, "httproutes", "anomaly-detector-canary", ns) or {}
        assert route["spec"]["parentRefs"] == [
            {"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "infra",
             "name": "main-gw", "sectionName": "http"}
        ]  # fmt: skip

        def split() -> dict[str, Any]:
            body = get(cluster, "modelversions", "canary-v2", ns) or {}
            return dict((body.get("status") or {}).get("trafficSplit") or {})

        wait_for(lambda: split().get("mode") == "gateway", "status: gateway mode", op=op)
        assert (split()["gateway"], split()["canaryPercent"]) == ("infra/main-gw/http", 10)
        deployment = get(cluster, "deployments", "canary-v2-predictor", ns) or {}
        assert deployment["spec"]["replicas"] == 2  # exact weights: its own replica count
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert labels["neuraxis.dev/routed"] == "false"  # reached through the Gateway only

        for i in range(35):
            assert predict(stable_server, GOOD) == 200
            assert predict(canary_server, BROKEN if i % 2 == 0 else GOOD) in (200, 500)
        wait_for(
            lambda: weights() == [("stable-v1-predictor", 100), ("canary-v2-predictor", 0)],
            "the canary's weight to drop to 0",
            timeout=60,
            op=op,
        )
        rolled = condition(get(cluster, "modelversions", "canary-v2", ns), "Canary") or {}
        assert rolled.get("reason") == "CanaryRolledBack", rolled
        assert (split()["canaryPercent"], split()["rolledBack"]) == (0, True)
