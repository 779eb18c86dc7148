"""What the operator asks of the API server: per Dataset run one Job, one status patch and one
Event per phase transition; reads come from its watch caches, so a resync of finished
resources sends nothing at all."""

from __future__ import annotations

import re
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from tests.cluster.conftest import Cluster
from tests.cluster.operator_fixtures import (
    OperatorProcess,
    example,
    phase,
    running_operator,
    wait_for,
    with_result,
)

ETL_OK = {"outcome": "Succeeded", "reason": "Succeeded", "version": 0, "rows": 10}
DATASETS = 4


def requests(op: OperatorProcess) -> Counter[tuple[str, str, str]]:
    """(kind reconciled, verb, resource) -> requests, from the operator's own counter."""
    url = f"http://127.0.0.1:{op.metrics_port}/metrics"
    body = urllib.request.urlopen(url, timeout=5).read().decode()
    out: Counter[tuple[str, str, str]] = Counter()
    for line in body.splitlines():
        if line.startswith("neuraxis_api_requests_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            key = (labels["kind"], labels["verb"], labels["resource"])
            out[key] += int(float(line.rsplit(" ", 1)[1]))
    return out


def test_a_dataset_run_costs_a_job_and_one_patch_and_event_per_transition(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    ns = namespace
    with running_operator(cluster, ns, tmp_path, fake_nodes=True) as op:
        wait_for(lambda: _reachable(op), "operator metrics", op=op)
        for i in range(DATASETS):
            doc = with_result(example("01-sensor-readings.yaml"), ETL_OK)
            doc["metadata"]["name"] = f"readings-{i}"
            cluster.apply(doc, ns)

        def all_ready() -> bool:
            return all(
                phase(cluster, "datasets", f"readings-{i}", ns) == "Ready" for i in range(DATASETS)
            )

        wait_for(all_ready, "every Dataset Ready", op=op)
        time.sleep(1)  # the last Ready's Event
        settled = requests(op)
        time.sleep(7)  # two resyncs (every 3 s in the tests) of finished Datasets
        later = requests(op)

    by_dataset = {(v, r): n for (k, v, r), n in settled.items() if k == "Dataset"}
    assert by_dataset == {
        ("create", "jobs"): DATASETS,
        ("patch", "datasets/status"): 2 * DATASETS,  # New -> Running, Running -> Ready
        ("create", "events"): 2 * DATASETS,
        ("create", "serviceaccounts"): 1,  # the namespace's workload account, once
    }, by_dataset
    assert sum(by_dataset.values()) / DATASETS <= 6
    # No GET or LIST while reconciling: the only reads are the caches' own lists and watches.
    reads = {key: n for key, n in settled.items() if key[1] in ("get", "list") and key[0]}
    assert reads == {}, reads
    # Steady state: resyncs of finished resources send nothing.
    moved = {
        key: later[key] - settled.get(key, 0) for key in later if later[key] != settled.get(key, 0)
    }
    assert {k: n for k, n in moved.items() if k[1] != "watch"} == {}, moved


def _reachable(op: OperatorProcess) -> bool:
    try:
        requests(op)
    except OSError:
        return False
    return True


EVAL_OK = {
    "outcome": "Succeeded",
    "reason": "GatesPassed",
    "passed": True,
    "metrics": {"accuracy": 0.93},
    "gates": [{"metric": "accuracy", "value": 0.93, "min": 0.8, "passed": True}],
}


def model_version(name: str, **serving: object) -> dict[str, Any]:
    doc = with_result(example("04-anomaly-detector-v1.yaml"), EVAL_OK)
    doc["metadata"]["name"] = name
    doc["spec"]["source"] = {
        "uri": f"s3://lake/models/ml/anomaly-detector/{name}",
        "digest": "sha256:" + "ab" * 32,
    }
    doc["spec"]["serving"] = {"replicas": 2, "auth": {"mode": "none"}, **serving}
    return doc


def test_two_versions_sharing_the_model_service_settle_without_writes(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    """The stable version and its canary both build the model-level Service: the one that
    controls it keeps it, the other does not fight over it (no apply loop)."""
    ns = namespace
    stable = model_version("stable-v1")
    stable["spec"]["stage"] = "production"
    canary = model_version(
        "canary-v2", canary={"trafficPercent": 10, "stableRef": {"name": "stable-v1"}}
    )
    with running_operator(cluster, ns, tmp_path, fake_nodes=True) as op:
        cluster.apply(stable, ns)
        cluster.apply(canary, ns)

        def serving() -> bool:
            return all(
                phase(cluster, "modelversions", n, ns) == "Serving"
                for n in ("stable-v1", "canary-v2")
            )

        wait_for(serving, "both versions Serving", timeout=120, op=op)
        time.sleep(4)
        settled = requests(op)
        time.sleep(8)
        later = requests(op)
    writes = {
        key: later[key] - settled.get(key, 0)
        for key in later
        if key[1] not in ("watch", "list", "get") and later[key] != settled.get(key, 0)
    }
    assert writes == {}, writes
    service = cluster.kubectl_json("get", "service", "anomaly-detector", "--namespace", ns)
    [owner] = service["metadata"]["ownerReferences"]
    assert owner["name"] in ("stable-v1", "canary-v2")
