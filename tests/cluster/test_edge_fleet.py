"""EdgeDeployment fleet status on the real control plane: the DaemonSet controller places the
agents on KWOK edge nodes, and a node that goes dark (KWOK stops managing it and its Ready
condition turns False, as the node lifecycle controller would report it) shows up as offline
in its site's counts, and comes back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from neuraxis.dev.cluster import KWOK_NODE_ANNOTATION
from tests.cluster.conftest import Cluster
from tests.cluster.operator_fixtures import (
    OperatorProcess,
    example,
    get,
    running_operator,
    wait_for,
    with_result,
)

DIGEST = "sha256:" + "cd" * 32
EVAL_OK = {
    "outcome": "Succeeded",
    "reason": "GatesPassed",
    "passed": True,
    "metrics": {"accuracy": 0.93},
    "gates": [{"metric": "accuracy", "value": 0.93, "min": 0.8, "passed": True}],
}
BUNDLE_OK = {
    "outcome": "Succeeded",
    "reason": "Bundled",
    "bundle": {"uri": "s3://lake/edge/ml/anomaly-detector/anomaly-detector-v1", "digest": DIGEST},
}
ED = "anomaly-detector-plants"
DARK_NODE = "kwok-edge-1"  # plant-a, not the canary


@pytest.fixture
def operator(cluster: Cluster, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    with running_operator(cluster, namespace, tmp_path, fake_nodes=True) as op:
        yield op


def _sites(cluster: Cluster, ns: str) -> dict[str, dict[str, Any]]:
    ed = get(cluster, "edgedeployments", ED, ns) or {}
    return {s["name"]: s for s in (ed.get("status") or {}).get("sites") or []}


def _set_ready(cluster: Cluster, node: str, status: str) -> None:
    patch = {"status": {"conditions": [{"type": "Ready", "status": status,
             "reason": "NeuraxisTest", "message": "fault injection"}]}}  # fmt: skip
    cluster.kubectl(
        "patch", "node", node, "--subresource=status", "--type=strategic",
        f"--patch={json.dumps(patch)}",
    )  # fmt: skip


def test_site_counts_follow_a_node_that_goes_dark_and_comes_back(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    ns = namespace
    mv = with_result(example("04-anomaly-detector-v1.yaml"), EVAL_OK)
    mv["spec"]["source"] = {"uri": "s3://lake/models/ml/anomaly-detector/v1", "digest": DIGEST}
    mv["spec"].pop("serving", None)  # the edge rollout alone
    edge = with_result(example("05-anomaly-detector-edge.yaml"), BUNDLE_OK)
    edge["spec"]["load"] = {"maxInFlight": 8, "latencyTargetMs": 20}
    for doc in (mv, edge):
        cluster.apply(doc, ns)

    def all_ready() -> Any:
        sites = _sites(cluster, ns)
        want = {"plant-a": (2, 2, 2, 0), "plant-b": (1, 1, 1, 0)}
        got = {k: (s["desired"], s["ready"], s["updated"], s["offline"]) for k, s in sites.items()}
        return got == want and sites

    wait_for(all_ready, "every site ready and updated", timeout=180, op=operator)
    [agent] = cluster.kubectl_json("get", "daemonset", f"{ED}-canary", "--namespace", ns)["spec"][
        "template"
    ]["spec"]["containers"]
    assert agent["command"][agent["command"].index("--max-in-flight") + 1] == "8"
    assert agent["command"][agent["command"].index("--latency-target-ms") + 1] == "20"

    # The node goes dark: KWOK no longer answers for it, and its Ready condition turns False.
    cluster.kubectl("annotate", "node", DARK_NODE, f"{KWOK_NODE_ANNOTATION}-")
    try:
        _set_ready(cluster, DARK_NODE, "False")
        wait_for(
            lambda: _sites(cluster, ns).get("plant-a", {}).get("offline") == 1,
            "plant-a to count one offline node",
            op=operator,
        )
        ed = get(cluster, "edgedeployments", ED, ns)
        assert ed is not None and ed["status"]["offlineNodes"] == 1
        assert _sites(cluster, ns)["plant-b"]["offline"] == 0
    finally:
        # Back under KWOK, which makes it Ready again (shared nodes: always restored).
        cluster.kubectl(
            "annotate", "--overwrite", "node", DARK_NODE, f"{KWOK_NODE_ANNOTATION}=fake"
        )
    wait_for(
        lambda: _sites(cluster, ns).get("plant-a", {}).get("offline") == 0,
        "plant-a back online",
        op=operator,
    )
    ed = get(cluster, "edgedeployments", ED, ns)
    assert ed is not None and ed["status"]["offlineNodes"] == 0
