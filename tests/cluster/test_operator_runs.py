"""Run identity on the real control plane: a Dataset or TrainingJob deleted and created again
under the same name gets a new run (new run id, its own result), and a spec change while a run
is going stops that run (its Job and pods gone) before the next one exists."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes import watch

from tests.cluster.conftest import Cluster
from tests.cluster.operator_fixtures import (
    example,
    get,
    names,
    phase,
    running_operator,
    wait_for,
    with_result,
)

DIGEST_A = "sha256:" + "aa" * 32
DIGEST_B = "sha256:" + "bb" * 32


def etl_result(version: int, digest: str) -> dict[str, Any]:
    return {
        "outcome": "Succeeded",
        "reason": "Succeeded",
        "version": version,
        "rows": 100 + version,
        "qualityPassed": True,
        "digest": digest,
    }


def train_result(loss: float, digest: str) -> dict[str, Any]:
    return {
        "outcome": "Succeeded",
        "reason": "Succeeded",
        "metrics": {"val_loss": loss},
        "artifact": {"uri": "s3://lake/models/ml/anomaly-detector/v1", "digest": digest},
    }


def readings(result: dict[str, Any]) -> dict[str, Any]:
    doc = with_result(example("01-sensor-readings.yaml"), result)
    doc["spec"]["source"] = {"builtin": {"name": "sensors", "rows": 100}}
    doc["spec"].pop("privacy", None)
    return doc


def training(result: dict[str, Any], **resources: Any) -> dict[str, Any]:
    doc = with_result(example("03-anomaly-detector-train.yaml"), result)
    doc["spec"]["datasetRef"] = {"name": "sensor-readings"}
    doc["spec"].pop("tuning", None)
    doc["spec"].pop("register", None)
    doc["spec"]["resources"] = {"workers": 1, "cpu": "1", "memory": "1Gi", **resources}
    return doc


def status(cluster: Cluster, kind: str, name: str, ns: str) -> dict[str, Any]:
    return dict(((get(cluster, kind, name, ns) or {}).get("status")) or {})


def job_names(cluster: Cluster, ns: str, owner: str) -> list[str]:
    return [n.split("/", 1)[1] for n in names(cluster, "jobs", ns, owner)]


def run_id_of_pods(cluster: Cluster, ns: str, job: str) -> set[str]:
    """NEURAXIS_RUN_ID as the workload gets it: the job-name label of its pod."""
    pods = cluster.kubectl_json("get", "pods", "--namespace", ns, "-l", f"job-name={job}")
    return {p["metadata"]["labels"]["batch.kubernetes.io/job-name"] for p in pods["items"]}


def delete_and_wait(cluster: Cluster, kind: str, name: str, ns: str) -> None:
    cluster.kubectl("delete", kind, name, "--namespace", ns, "--wait=true", timeout=90)


def test_recreated_dataset_and_training_job_start_fresh_runs(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    ns = namespace
    with running_operator(cluster, ns, tmp_path, fake_nodes=True) as op:
        cluster.apply(readings(etl_result(3, DIGEST_A)), ns)
        cluster.apply(training(train_result(0.5, DIGEST_A)), ns)
        wait_for(lambda: phase(cluster, "trainingjobs", "anomaly-detector-train", ns)
                 == "Succeeded", "first TrainingJob Succeeded", op=op)  # fmt: skip
        first_ds = status(cluster, "datasets", "sensor-readings", ns)
        first_tj = status(cluster, "trainingjobs", "anomaly-detector-train", ns)
        old_etl, old_train = first_ds["runs"][0]["id"], first_tj["runs"][0]["id"]
        assert first_ds["version"] == 3 and first_tj["lineage"]["datasetVersion"] == 3
        assert run_id_of_pods(cluster, ns, old_etl) == {old_etl}

        delete_and_wait(cluster, "trainingjob", "anomaly-detector-train", ns)
        delete_and_wait(cluster, "dataset", "sensor-readings", ns)
        cluster.apply(readings(etl_result(4, DIGEST_B)), ns)
        cluster.apply(training(train_result(0.25, DIGEST_B)), ns)
        wait_for(lambda: phase(cluster, "trainingjobs", "anomaly-detector-train", ns)
                 == "Succeeded", "second TrainingJob Succeeded", op=op)  # fmt: skip

    ds = status(cluster, "datasets", "sensor-readings", ns)
    tj = status(cluster, "trainingjobs", "anomaly-detector-train", ns)
    new_etl, new_train = ds["runs"][0]["id"], tj["runs"][0]["id"]
    # New run ids (the uid part), for the same generation 1: nothing of the old runs is reused.
    assert new_etl != old_etl and new_train != old_train
    assert new_etl.endswith("-g1") and new_train.endswith("-g1")
    uid = (get(cluster, "datasets", "sensor-readings", ns) or {})["metadata"]["uid"]
    assert new_etl == f"sensor-readings-etl-{uid[:8]}-g1"
    assert [r["id"] for r in ds["runs"]] == [new_etl]  # the history starts afresh
    assert run_id_of_pods(cluster, ns, new_etl) == {new_etl}
    # The new runs' results, not the old ones: no stale version, no old model.
    assert (ds["version"], ds["table"]["digest"]) == (4, DIGEST_B)
    assert tj["lineage"]["datasetVersion"] == 4 and tj["artifact"]["digest"] == DIGEST_B
    assert tj["metrics"]["val_loss"] == 0.25


class JobAndPodEvents:
    """Every Job and Pod event of a namespace, in the order the API server sent them."""

    def __init__(self, cluster: Cluster, ns: str):
        self.api_client = cluster.api_client()
        self.ns = ns
        self.events: list[tuple[str, str, str, dict[str, str]]] = []  # kind, type, name, labels
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def _follow(self, kind: str, list_call: Any) -> None:
        resource_version = list_call(self.ns).metadata.resource_version
        while not self.stop.is_set():
            stream = watch.Watch().stream(  # type: ignore[no-untyped-call]
                list_call, self.ns, resource_version=resource_version, timeout_seconds=2
            )
            for event in stream:
                meta = event["object"].metadata
                resource_version = meta.resource_version
                with self.lock:
                    self.events.append((kind, event["type"], meta.name, meta.labels or {}))

    @contextmanager
    def running(self) -> Iterator[JobAndPodEvents]:
        calls = {
            "Job": k8s.BatchV1Api(self.api_client).list_namespaced_job,
            "Pod": k8s.CoreV1Api(self.api_client).list_namespaced_pod,
        }
        threads = [
            threading.Thread(target=self._follow, args=item, daemon=True) for item in calls.items()
        ]
        for thread in threads:
            thread.start()
        time.sleep(1)  # both watches are open before anything happens
        try:
            yield self
        finally:
            self.stop.set()
            for thread in threads:
                thread.join(timeout=10)
            self.api_client.close()


def test_a_spec_change_stops_the_running_run_before_the_next_one_starts(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    ns = namespace
    owner = "neuraxis.dev/trainingjob=anomaly-detector-train"
    recorder = JobAndPodEvents(cluster, ns)
    with (
        running_operator(cluster, ns, tmp_path, fake_nodes=True) as op,
        recorder.running() as seen,
    ):
        cluster.apply(readings(etl_result(0, DIGEST_A)), ns)
        # More memory than any node has: the run's pod stays Pending, the run unfinished.
        cluster.apply(training(train_result(0.5, DIGEST_A), memory="4000Gi"), ns)
        [old] = wait_for(lambda: job_names(cluster, ns, owner), "first run's Job", op=op)
        wait_for(lambda: names(cluster, "pods", ns, f"job-name={old}"), "first run's pod", op=op)
        assert phase(cluster, "trainingjobs", "anomaly-detector-train", ns) == "Running"

        cluster.apply(training(train_result(0.25, DIGEST_B)), ns)  # generation 2
        wait_for(lambda: phase(cluster, "trainingjobs", "anomaly-detector-train", ns)
                 == "Succeeded", "second run Succeeded", op=op)  # fmt: skip
        [new] = job_names(cluster, ns, owner)

    assert new.endswith("-g2") and old.endswith("-g1")
    with seen.lock:
        events = list(seen.events)

    def first(kind: str, type_: str, name: str) -> int:
        return next(i for i, e in enumerate(events) if e[:3] == (kind, type_, name))

    old_pods = {e[2] for e in events if e[0] == "Pod" and e[3].get("job-name") == old}
    assert old_pods, events
    new_job_created = first("Job", "ADDED", new)
    assert first("Job", "DELETED", old) < new_job_created, events
    for pod in old_pods:
        assert first("Pod", "DELETED", pod) < new_job_created, (pod, events)
    tj = status(cluster, "trainingjobs", "anomaly-detector-train", ns)
    assert [(r["id"], r["phase"]) for r in tj["runs"]] == [
        (new, "Succeeded"),
        (old, "Superseded"),
    ]
    assert tj["metrics"]["val_loss"] == 0.25
