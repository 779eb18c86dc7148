"""Spark on Kubernetes for real: a Dataset with `engine.executors: 2` runs its ETL Job on the
real kubelet node; the Job's pod is the Spark driver and asks the API server (through the
`kubernetes` Service, as `neuraxis-spark`) for two executor pods, which Spark builds from the
template the driver writes and which run `neuraxis workload spark-executor` from the offline
workload image. The table lands in a real MinIO on the node's bridge.

Nothing is fabricated: the status is what the driver reported, the executor pods are read back
from the API server (node, owner, security, logs) and the table from MinIO with delta-rs.

Smaller than the defaults so that it fits the 2-core node: executors request 250m CPU (they
may still use one core each) and 512m of heap."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from deltalake import DeltaTable

from tests.cluster.conftest import Cluster, NodeLake
from tests.cluster.operator_fixtures import (
    OperatorProcess,
    condition,
    get,
    phase,
    running_operator,
    wait_for,
)

NAME = "spark-readings"
EXECUTORS = 2
DATASET: dict[str, Any] = {
    "apiVersion": "neuraxis.dev/v1alpha1",
    "kind": "Dataset",
    "metadata": {"name": NAME},
    "spec": {
        "source": {"builtin": {"name": "sensors", "rows": 4000, "seed": 11}},
        # The dedupe shuffles rows between the executors.
        "transform": {"dedupe": {"keys": ["machine_id", "ts"]}},
        "quality": {
            "onFailure": "Quarantine",
            "expectations": [
                {"rule": "notNull", "column": "machine_id"},
                {"rule": "range", "column": "temperature", "min": -40, "max": 150},
                {"rule": "rowCount", "min": 1000},
            ],
        },
        "engine": {
            "executors": EXECUTORS,
            "executorCores": 1,
            "executorMemory": "512m",
            "executorCpuRequest": "250m",
            "driverMemory": "1g",
        },
    },
}


def _pods(cluster: Cluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    pods: list[dict[str, Any]] = cluster.kubectl_json(
        "get", "pods", "--namespace", namespace, "-l", selector
    )["items"]
    return pods


def _logs(cluster: Cluster, namespace: str, pod: str) -> str:
    return cluster.kubectl("logs", pod, "--namespace", namespace)


@pytest.mark.timeout(2400)
def test_a_dataset_with_executors_runs_spark_on_kubernetes(
    cluster: Cluster,
    namespace: str,
    real_node: str,
    workload_image: str,
    node_lake: NodeLake,
    tmp_path: Path,
) -> None:
    ns = namespace
    server = node_lake.server
    cluster.apply(server.secret_manifest(ns), ns)
    env = {"NEURAXIS_IMAGE": workload_image, "NEURAXIS_LAKE_URI": server.lake_uri}
    started = time.monotonic()
    with running_operator(cluster, ns, tmp_path, env=env) as op:
        cluster.apply(DATASET, ns)
        wait_for(
            lambda: phase(cluster, "datasets", NAME, ns) in ("Ready", "Failed"),
            f"Dataset {NAME} finished",
            timeout=1500,
            op=op,
        )
        elapsed = time.monotonic() - started
        ds = get(cluster, "datasets", NAME, ns)
        assert ds is not None
        driver = _driver_pod(cluster, ns, real_node)
        driver_log = _logs(cluster, ns, driver["metadata"]["name"])
        assert ds["status"]["phase"] == "Ready", (
            json.dumps(ds["status"], indent=1) + "\ndriver log:\n" + driver_log[-6000:]
        )
        assert condition(ds, "Ready")["status"] == "True"  # type: ignore[index]
        executors = _check_executors(cluster, ns, real_node, driver, workload_image, op)
        _check_table(ds, node_lake)
    _report_times(elapsed, driver, executors, ns, node_lake)


def _driver_pod(cluster: Cluster, ns: str, node: str) -> dict[str, Any]:
    [driver] = _pods(cluster, ns, f"neuraxis.dev/dataset={NAME},app.kubernetes.io/component=etl")
    assert driver["spec"]["nodeName"] == node
    assert driver["spec"]["serviceAccountName"] == "neuraxis-spark"
    return driver


def _check_executors(
    cluster: Cluster,
    ns: str,
    node: str,
    driver: dict[str, Any],
    image: str,
    op: OperatorProcess,
) -> list[dict[str, Any]]:
    # The driver stopped its session: the executors shut down cleanly and their pods stay,
    # finished, until the driver pod goes.
    executors = wait_for(
        lambda: [
            p
            for p in _pods(cluster, ns, "spark-role=executor")
            if p["status"].get("phase") in ("Succeeded", "Failed")
        ],
        "executor pods finished",
        timeout=120,
        op=op,
    )
    executors = _pods(cluster, ns, "spark-role=executor")
    names = [p["metadata"]["name"] for p in executors]
    assert len(executors) == EXECUTORS, names
    for pod in executors:
        name = pod["metadata"]["name"]
        log = _logs(cluster, ns, name)
        assert pod["status"]["phase"] == "Succeeded", f"{name}: {pod['status']}\n{log[-4000:]}"
        assert pod["spec"]["nodeName"] == node
        assert pod["metadata"]["labels"]["neuraxis.dev/dataset"] == NAME
        [owner] = pod["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"]) == ("Pod", driver["metadata"]["name"])
        spec = pod["spec"]
        [container] = spec["containers"]
        assert container["image"] == image
        assert container["command"][-3:] == ["neuraxis", "workload", "spark-executor"]
        assert container["args"] == ["executor"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert spec["securityContext"]["runAsUser"] == 10001
        assert spec["automountServiceAccountToken"] is False
        assert spec["serviceAccountName"] == "neuraxis-workload"
        assert container["resources"]["requests"]["cpu"] == "250m"
        # The executor JVM joined the driver (over the pod network) and ran tasks.
        assert "Successfully registered with driver" in log, log[-4000:]
    logs = "\n".join(_logs(cluster, ns, n) for n in names)
    assert "Finished task" in logs, logs[-4000:]
    return executors


def _check_table(ds: dict[str, Any], node_lake: NodeLake) -> None:
    status = ds["status"]
    lake = node_lake.client()
    uri = status["table"]["uri"]
    assert uri.startswith(f"{node_lake.server.lake_uri}/tables/"), uri
    table = DeltaTable(uri, storage_options=lake.storage_options())
    assert table.version() == status["version"]
    rows = table.to_pyarrow_table().num_rows
    assert rows == status["rows"] > 1000, status
    assert status["quarantinedRows"] + rows <= 4000


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _report_times(
    elapsed: float,
    driver: dict[str, Any],
    executors: list[dict[str, Any]],
    ns: str,
    node_lake: NodeLake,
) -> None:
    """The figures of this run, for people (the ETL's own timings come from its result)."""
    created = _seconds(driver["metadata"]["creationTimestamp"])
    run_id = driver["metadata"]["labels"]["batch.kubernetes.io/job-name"]
    lake = node_lake.client()
    result = json.loads(lake.read_bytes(f"{lake.run_path(ns, run_id)}/result.json"))
    lines = [f"Dataset Ready {elapsed:.0f}s after it was applied; ETL timings {result['timings']}"]
    for status in driver["status"].get("containerStatuses") or []:
        done = status["state"].get("terminated") or {}
        if done:
            began = _seconds(done["startedAt"]) - created
            ended = _seconds(done["finishedAt"]) - created
            lines.append(f"driver: container started +{began:.0f}s, finished +{ended:.0f}s")
    for pod in executors:
        [state] = pod["status"]["containerStatuses"]
        done = state["state"]["terminated"]
        made = _seconds(pod["metadata"]["creationTimestamp"]) - created
        began = _seconds(done["startedAt"]) - created
        ended = _seconds(done["finishedAt"]) - created
        lines.append(
            f"{pod['metadata']['name']}: created +{made:.0f}s, container started +{began:.0f}s, "
            f"finished +{ended:.0f}s after the driver pod was created"
        )
    print("\n".join(lines))
