"""The pieces under the operator's runtime: the work queue (one worker per key, debounce, no
duplicates), the watch cache's store and indexes, and specs that travel inside their Job."""

from __future__ import annotations

import threading
import time
from typing import Any

import yaml

from neuraxis.crds import Dataset
from neuraxis.operator.builders.common import INLINE_SPEC_MAX, SPEC_ANNOTATION, inline_specs
from neuraxis.operator.builders.dataset import build_dataset_children
from neuraxis.operator.children import SPEC_FILE
from neuraxis.operator.informer import Informer, Watched, keep_job, keep_pod
from neuraxis.operator.kube import Kube
from neuraxis.operator.settings import OperatorSettings
from neuraxis.operator.workqueue import WorkQueue
from neuraxis.resources import load_resources, parse_resource
from tests.conftest import EXAMPLES


# ---- work queue ----------
def test_a_key_is_queued_once_and_comes_back_after_work_if_added_meanwhile() -> None:
    queue: WorkQueue[str] = WorkQueue()
    for _ in range(5):
        queue.add("a")
    queue.add("b")
    assert len(queue) == 2
    assert queue.get(timeout=0) == "a"
    queue.add("a")  # while it is worked on: runs again after done(), not in parallel
    assert queue.get(timeout=0) == "b"
    assert queue.get(timeout=0.05) is None
    queue.done("a")
    assert queue.get(timeout=0) == "a"


def test_a_delayed_key_waits_and_an_earlier_add_moves_it_forward() -> None:
    now = [0.0]
    queue: WorkQueue[str] = WorkQueue(clock=lambda: now[0])
    queue.add("owner", delay=0.2)
    queue.add("owner", delay=0.5)  # a later event does not push it back
    assert queue.get(timeout=0) is None
    now[0] = 0.25
    assert queue.get(timeout=0) == "owner"
    queue.done("owner")
    queue.add("x", delay=10)
    queue.add("x", delay=0)
    assert queue.get(timeout=0) == "x"


def test_workers_never_hold_one_key_at_once() -> None:
    queue: WorkQueue[int] = WorkQueue()
    busy: set[int] = set()
    overlaps: list[int] = []
    done = threading.Event()
    lock = threading.Lock()

    def worker() -> None:
        while not done.is_set():
            key = queue.get(timeout=0.05)
            if key is None:
                continue
            with lock:
                if key in busy:
                    overlaps.append(key)
                busy.add(key)
            time.sleep(0.001)
            with lock:
                busy.discard(key)
            queue.done(key)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for i in range(3000):
        queue.add(i % 7)
    time.sleep(0.3)
    done.set()
    queue.close()
    for t in threads:
        t.join()
    assert overlaps == []


# ---- watch cache store ----------
def informer(watched: Watched) -> Informer:
    return Informer(Kube.__new__(Kube), watched, ["ml"])  # the store only: no requests here


def job(name: str, rv: int, owner: str, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "ml",
            "resourceVersion": str(rv),
            "labels": {"neuraxis.dev/dataset": owner},
            "managedFields": [{"manager": "x" * 100}],
        },
        "spec": {"suspend": False, "template": {"spec": {"containers": [{"name": "main"}]}}},
        "status": status,
    }


def test_the_cache_indexes_by_label_trims_and_ignores_older_versions() -> None:
    jobs = informer(
        Watched("batch/v1", "Job", "jobs", trim=keep_job, indexed_labels=("neuraxis.dev/dataset",))
    )
    seen: list[tuple[str, Any, Any]] = []
    jobs.handler = lambda t, old, new: seen.append((t, old, new))
    jobs._apply_event("ADDED", job("a-etl-1", 10, "a"))
    jobs._apply_event("ADDED", job("b-etl-1", 11, "b"))
    jobs.observe(job("a-etl-1", 20, "a", active=1))  # our own write, answered by the API
    jobs._apply_event("MODIFIED", job("a-etl-1", 20, "a", active=1))  # its echo: quiet
    jobs._apply_event("MODIFIED", job("a-etl-1", 15, "a"))  # older than what we have
    assert [t for t, _, _ in seen] == ["ADDED", "ADDED"]
    [found] = jobs.list("ml", {"neuraxis.dev/dataset": "a"})
    assert found["status"] == {"active": 1} and "template" not in found["spec"]
    assert "managedFields" not in found["metadata"] and found["kind"] == "Job"
    jobs._apply_event("DELETED", job("a-etl-1", 21, "a"))
    assert jobs.list("ml", {"neuraxis.dev/dataset": "a"}) == []
    assert [j["metadata"]["name"] for j in jobs.list("ml")] == ["b-etl-1"]
    assert seen[-1][0] == "DELETED" and seen[-1][2] is None


def test_a_pod_keeps_only_its_run_labels_phase_and_termination_messages() -> None:
    labels = {
        "batch.kubernetes.io/job-name": "ds-etl-0a1b2c3d-g1",
        "neuraxis.dev/dataset": "ds",
        "controller-uid": "5e1f",
    }
    pod = {
        "metadata": {"name": "p", "namespace": "ml", "uid": "u", "labels": labels, "annotations": {
            "neuraxis.dev/resource": "big" * 1000}, "ownerReferences": [{"kind": "Job"}]},
        "spec": {"containers": [{"name": "main", "image": "i"}]},
        "status": {
            "phase": "Succeeded",
            "conditions": [{"type": "Ready"}],
            "containerStatuses": [{"name": "main", "image": "i", "state": {
                "terminated": {"message": "{}", "exitCode": 0}}}],
        },
    }  # fmt: skip
    kept = keep_pod(pod)
    assert kept == {
        "metadata": {
            "name": "p",
            "namespace": "ml",
            "labels": {
                "batch.kubernetes.io/job-name": "ds-etl-0a1b2c3d-g1",
                "neuraxis.dev/dataset": "ds",
            },
        },
        "status": {
            "phase": "Succeeded",
            "containerStatuses": [{"state": {"terminated": {"message": "{}"}}}],
        },
    }
    # Keys and short values are shared between cached objects, not copied per object.
    again = keep_pod(pod)
    assert next(iter(again["metadata"]["labels"])) is next(iter(kept["metadata"]["labels"]))
    # A predictor pod: its IP and the test clusters' metrics URL are what the canary analysis
    # reads (nothing else of the annotations).
    url = {"neuraxis.dev/kwok-metrics-url": "http://127.0.0.1:9/metrics"}
    predictor = keep_pod(
        {
            "metadata": {"name": "p", "annotations": {"neuraxis.dev/resource": "big", **url}},
            "status": {"phase": "Running", "podIP": "10.0.0.7"},
        }
    )
    assert predictor["status"]["podIP"] == "10.0.0.7"
    assert predictor["metadata"]["annotations"] == {
        "neuraxis.dev/kwok-metrics-url": "http://127.0.0.1:9/metrics"
    }


# ---- the spec inside the Job ----------
def _dataset() -> Dataset:
    ds = next(r for r in load_resources([EXAMPLES / "smart-manufacturing"]) if r.kind == "Dataset")
    assert isinstance(ds, Dataset)
    ds.metadata.namespace, ds.metadata.uid, ds.metadata.generation = "ml", "0a1b2c3d-e", 1
    return ds


def test_a_small_spec_travels_in_the_job_and_reads_back_at_the_same_path() -> None:
    children = build_dataset_children(_dataset(), OperatorSettings())
    config = next(c for c in children if c["kind"] == "ConfigMap")
    [job] = inline_specs(children)  # the ConfigMap is gone
    template = job["spec"]["template"]
    text = template["metadata"]["annotations"][SPEC_ANNOTATION]
    assert text == config["data"]["resource.yaml"]
    assert parse_resource(yaml.safe_load(text)).kind == "Dataset"
    [volume] = [v for v in template["spec"]["volumes"] if v["name"] == "spec"]
    assert volume == {
        "name": "spec",
        "downwardAPI": {
            "items": [
                {
                    "path": "resource.yaml",
                    "fieldRef": {"fieldPath": f"metadata.annotations['{SPEC_ANNOTATION}']"},
                }
            ]
        },
    }
    mount = next(
        m for m in template["spec"]["containers"][0]["volumeMounts"] if m["name"] == "spec"
    )
    assert f"{mount['mountPath']}/resource.yaml" == SPEC_FILE
    assert children[1]["spec"]["template"]["spec"]["volumes"][0].get("configMap")  # untouched


def test_a_large_spec_keeps_its_config_map() -> None:
    children = build_dataset_children(_dataset(), OperatorSettings())
    kept = inline_specs(children, limit=100)
    assert [c["kind"] for c in kept] == ["ConfigMap", "Job"]
    assert kept == children
    assert INLINE_SPEC_MAX >= 64 * 1024


def test_training_metrics_are_exported_from_status_and_vanish_with_the_job() -> None:
    from prometheus_client import REGISTRY

    from neuraxis.operator.runtime import export_training_metrics

    def value(job: str, metric: str) -> float | None:
        labels = {"namespace": "ml", "trainingjob": job, "metric": metric}
        return REGISTRY.get_sample_value("neuraxis_training_metric", labels)

    done = {"metadata": {"namespace": "ml", "name": "a"},
            "status": {"metrics": {"accuracy": 0.93, "val_loss": 0.2}}}  # fmt: skip
    running = {"metadata": {"namespace": "ml", "name": "b"}, "status": {"phase": "Running"}}
    export_training_metrics([done, running])
    assert (value("a", "accuracy"), value("a", "val_loss")) == (0.93, 0.2)
    assert value("b", "accuracy") is None
    export_training_metrics([running])
    assert value("a", "accuracy") is None
