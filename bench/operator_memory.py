"""Operator memory at scale, without a cluster (figures, not a test).

Fills the operator's own watch caches (the Informer stores and their trimming, in this process)
with N Datasets, N TrainingJobs, their 2N Jobs and 2N pods, each shaped as the API server
returns it (defaults, managed fields, the spec annotation a run's pod carries, finished status),
and prints the resident memory they add. `bench/operator_scale.py` measures the whole operator
process at 1k; this extends the cache part to 10k without an hour of KWOK pods.

    .venv/bin/python bench/operator_memory.py [--n 10000]
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
from pathlib import Path
from typing import Any

from neuraxis.operator.builders.common import inline_specs
from neuraxis.operator.builders.dataset import build_dataset_children
from neuraxis.operator.builders.training import ResolvedDataset, build_training_children
from neuraxis.operator.informer import Informer
from neuraxis.operator.kube import Kube
from neuraxis.operator.outcomes import Draft, status_from_draft
from neuraxis.operator.runtime import watched_kinds
from neuraxis.operator.settings import OperatorSettings
from neuraxis.resources import parse_resource

Obj = dict[str, Any]
NOW = "2026-01-01T00:00:00Z"
RESULT = json.dumps({"outcome": "Succeeded", "reason": "Succeeded", "version": 0, "rows": 10})
MANAGED_FIELDS: list[Obj] = [
    {"manager": m, "operation": "Update", "apiVersion": "v1", "time": NOW, "fieldsType": "FieldsV1",
     "fieldsV1": {"f:status": {"f:conditions": {}, "f:phase": {}, "f:startTime": {}}}}
    for m in ("kube-controller-manager", "kwok", "neuraxis")
]  # fmt: skip


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")


def meta(name: str, i: int, kind: str, extra: Obj | None = None) -> Obj:
    return {
        "name": name,
        "namespace": "nx-bench",
        "uid": f"{i:08x}-0000-4000-8000-{kind[:4].lower():0>4}{i:08x}",
        "resourceVersion": str(100000 + i),
        "generation": 1,
        "creationTimestamp": NOW,
        "managedFields": MANAGED_FIELDS,
        **(extra or {}),
    }


def resource(kind: str, i: int) -> Obj:
    result = {"neuraxis.dev/kwok-termination-message": json.dumps({"outcome": "Succeeded"})}
    spec: Obj
    if kind == "Dataset":
        spec = {"source": {"builtin": {"name": "sensors", "rows": 10}}}
    else:
        spec = {
            "datasetRef": {"name": f"ds-{i:05d}"},
            "task": {"type": "classification", "label": "failure"},
            "model": {"architecture": "mlp", "epochs": 1},
        }
    body = {
        "apiVersion": "neuraxis.dev/v1alpha1",
        "kind": kind,
        "metadata": meta(f"{kind[:2].lower()}-{i:05d}", i, kind,
                         {"annotations": {"neuraxis.dev/pod-annotations": json.dumps(result)}}),
        "spec": spec,
    }  # fmt: skip
    wire = parse_resource(body).to_wire()  # the defaults the API server fills in
    done = "Ready" if kind == "Dataset" else "Succeeded"
    draft = Draft(done, "Succeeded", "finished", ready=True, run=(f"run-{i}", "Succeeded"))
    return {**wire, "metadata": body["metadata"], "status": status_from_draft(draft, {}, 1, NOW)}


def children(body: Obj, settings: OperatorSettings) -> list[Obj]:
    """The run's Job and pod as the API server returns them once finished."""
    res = parse_resource(body)
    if body["kind"] == "Dataset":
        built = build_dataset_children(res, settings)  # type: ignore[arg-type]
    else:
        built = build_training_children(res, ResolvedDataset("ds", 0), settings)  # type: ignore[arg-type]
    [job] = [c for c in inline_specs(built) if c["kind"] == "Job"]
    name = job["metadata"]["name"]
    job = copy.deepcopy(job)
    job["metadata"].update(meta(name, 0, "Job"))
    job["metadata"]["labels"] = built[-1]["metadata"]["labels"]
    job["status"] = {
        "conditions": [{"type": t, "status": "True", "lastTransitionTime": NOW, "reason": t}
                       for t in ("SuccessCriteriaMet", "Complete")],
        "startTime": NOW, "completionTime": NOW, "succeeded": 1, "ready": 0,
    }  # fmt: skip
    template = job["spec"]["template"]
    labels = {**template["metadata"]["labels"], "batch.kubernetes.io/job-name": name}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {**meta(f"{name}-0-abcde", 0, "Pod"), "labels": labels,
                     "annotations": template["metadata"].get("annotations") or {},
                     "ownerReferences": [{"kind": "Job", "name": name, "uid": "x"}]},
        "spec": {**template["spec"], "nodeName": "kwok-bench-1"},
        "status": {"phase": "Succeeded", "containerStatuses": [
            {"name": "main", "state": {"terminated": {"exitCode": 0, "message": RESULT}}}
        ]},
    }  # fmt: skip
    return [job, pod]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=10_000, help="Datasets and TrainingJobs each")
    args = parser.parse_args()
    settings = OperatorSettings(allow_kwok_annotations=True)  # as in the scale bench
    caches = {
        w.kind: Informer(Kube.__new__(Kube), w, ["nx-bench"])
        for w in watched_kinds(lambda *_: False)
    }
    templates = {kind: resource(kind, 0) for kind in ("Dataset", "TrainingJob")}
    kids = {kind: children(body, settings) for kind, body in templates.items()}
    gc.collect()
    before = rss_mb()
    for i in range(args.n):
        for kind, body in templates.items():
            obj = json.loads(json.dumps(body))  # fresh objects, as from the wire
            obj["metadata"]["name"] = f"{kind[:2].lower()}-{i:05d}"
            obj["metadata"]["uid"] = f"{kind}-{i}"
            caches[kind]._apply_event("ADDED", obj)
            for child in kids[kind]:
                copy_ = json.loads(json.dumps(child))
                copy_["metadata"]["name"] = f"{child['metadata']['name']}-{i}"
                caches[child["kind"]]._apply_event("ADDED", copy_)
    gc.collect()
    after = rss_mb()
    counts = {k: len(c) for k, c in caches.items() if len(c)}
    print(f"operator watch caches: {counts}")
    print(f"resident memory {before:.0f} MB -> {after:.0f} MB: +{after - before:.0f} MB for "
          f"{args.n} Datasets + {args.n} TrainingJobs with their Jobs and pods "
          f"({(after - before) * 1024 / (args.n * 6):.2f} KB per object)")  # fmt: skip


if __name__ == "__main__":
    main()
