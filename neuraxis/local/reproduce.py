"""`neuraxis reproduce trainingjob/<name>`: train again from what the artifact pins (the dataset
version, the seed, the final hyperparameters, the validation split, the worker count) into a
scratch run folder (runs/<ns>/<run-id>/model: the registered version is never touched), then
compare the final metrics with the recorded ones.

What is re-run is the final training: a search (spec.tuning) is not repeated, the chosen trial's
hyperparameters are pinned instead (Ray Tune's trial order is not deterministic; the trained
model is). Training is seeded end to end (workloads/train/loop.py) and runs with deterministic
algorithms on CPU, so on the same machine and code the metrics agree to the last bit; the
default tolerance (TOLERANCE, absolute, per metric) leaves room only for floating-point
summation order (another BLAS build or thread count)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from neuraxis.crds import TrainingJob
from neuraxis.lake import Lake
from neuraxis.local.runner import Runner
from neuraxis.operator.children import short_uid
from neuraxis.operator.inputs import CR_VERSION
from neuraxis.resources import parse_resource

TOLERANCE = 1e-4
# Hyperparameters the trainer records next to the architecture's own (TrainSettings fields).
SETTINGS_KEYS = {"learningRate": "learning_rate", "batchSize": "batch_size", "epochs": "epochs"}


class ReproduceError(Exception):
    """The reproduction cannot start or did not finish (the message says why)."""


@dataclass
class MetricDiff:
    metric: str
    original: float | None
    reproduced: float | None
    tolerance: float

    @property
    def diff(self) -> float | None:
        if self.original is None or self.reproduced is None:
            return None
        return abs(self.reproduced - self.original)

    @property
    def within(self) -> bool:
        diff = self.diff
        return diff is not None and not math.isnan(diff) and diff <= self.tolerance


@dataclass
class Reproduction:
    run_id: str
    artifact_uri: str
    original_artifact_uri: str
    metrics: list[MetricDiff]
    pinned: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    @property
    def reproduced(self) -> bool:
        return not self.warnings and all(m.within for m in self.metrics)


def pinned_job(body: dict[str, Any], training: dict[str, Any]) -> TrainingJob:
    """The TrainingJob as the artifact says it ran: dataset version, seed, final
    hyperparameters, split and workers pinned; no search, no registration (the artifact goes
    to the run's own folder)."""
    spec = dict(body["spec"])
    dataset = training.get("dataset") or {}
    if dataset.get("version") is None:
        raise ReproduceError("the artifact records no dataset version (model.pt training.dataset)")
    spec["datasetRef"] = {"name": dataset.get("name") or spec["datasetRef"]["name"]}
    spec["datasetRef"]["version"] = int(dataset["version"])
    spec.pop("tuning", None)
    spec.pop("register", None)
    if training.get("validationSplit") is not None:
        spec["validationSplit"] = float(training["validationSplit"])
    # The held-out test rows too: the same rows stay out of training (artifacts from before
    # test splits held none out).
    spec["testSplit"] = float(training.get("testSplit") or 0.0)
    if training.get("workers"):
        spec["resources"] = {**(spec.get("resources") or {}), "workers": int(training["workers"])}
    model = dict(spec.get("model") or {})
    hyperparameters = dict(training.get("hyperparameters") or {})
    for recorded, setting in SETTINGS_KEYS.items():
        if recorded in hyperparameters:
            model[_camel(setting)] = hyperparameters.pop(recorded)
    model["hyperparameters"] = hyperparameters
    model["seed"] = int(training["seed"])
    spec["model"] = model
    job = parse_resource({**{k: body[k] for k in ("apiVersion", "kind", "metadata")}, "spec": spec})
    assert isinstance(job, TrainingJob)
    return job


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


def code_warnings(recorded: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    """A warning per code property that differs from the one that trained the artifact."""
    recorded = recorded or {}
    out = []
    for key, what in (("neuraxis", "neuraxis version"), ("gitCommit", "git commit")):
        if recorded.get(key) != current.get(key):
            out.append(
                f"code version differs: {what} {recorded.get(key)} trained the artifact, "
                f"{current.get(key)} reproduced it"
            )
    return out


def compare_metrics(
    original: dict[str, Any], reproduced: dict[str, Any], tolerance: float
) -> list[MetricDiff]:
    return [
        MetricDiff(
            name,
            _number(original.get(name)),
            _number(reproduced.get(name)),
            tolerance,
        )
        for name in sorted(set(original) | set(reproduced))
    ]


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def reproduce(
    runner: Runner, namespace: str, name: str, tolerance: float = TOLERANCE
) -> Reproduction:
    from neuraxis.workloads.evaluate.heldout import folder_of, load_artifact
    from neuraxis.workloads.train.provenance import code_version

    body = runner.store.get(CR_VERSION, "TrainingJob", namespace, name)
    status = (body or {}).get("status") or {}
    if body is None:
        raise ReproduceError(
            f"TrainingJob {namespace}/{name}: not run on this machine (neuraxis run it first)"
        )
    if status.get("phase") != "Succeeded":
        raise ReproduceError(
            f"TrainingJob {name}: phase is {status.get('phase')}; only a Succeeded run is "
            "reproduced"
        )
    original_uri = str((status.get("artifact") or {}).get("uri") or "")
    if not original_uri:
        raise ReproduceError(f"TrainingJob {name}: status.artifact.uri is not recorded")
    lake = runner.lake
    training = load_artifact(lake, folder_of(lake, original_uri)).training
    job = pinned_job(body, training)
    job.metadata.namespace = namespace
    run_id = f"{name}-reproduce-{short_uid(job)}-{datetime.now(UTC):%Y%m%dT%H%M%S}"
    spec = runner.spec_file(job, run_id)
    args = runner.args("train", spec, namespace, run_id)
    if str(training.get("device", "cpu")) == "cpu":
        args += ["--device", "cpu"]
    result, log = runner.workload(job, args, run_id)
    if result is None or result.get("outcome") != "Succeeded":
        why = (result or {}).get("message") or f"no result, see {log}"
        raise ReproduceError(f"TrainingJob {name}: the reproduction run {run_id} failed: {why}")
    full = lake.read_json(f"{Lake.run_path(namespace, run_id)}/result.json")
    new_uri = str(full["artifact"]["uri"])
    if new_uri == original_uri:  # the scratch folder is the point; never overwrite
        raise ReproduceError(f"the reproduction wrote to the registered artifact {new_uri}")
    warnings = code_warnings(training.get("codeVersion"), code_version())
    recorded_digest = (training.get("dataset") or {}).get("digest")
    new_digest = ((full.get("lineage") or {}).get("dataset") or {}).get("digest")
    if recorded_digest != new_digest:
        warnings.append(f"dataset digest differs: {recorded_digest} then, {new_digest} now")
    return Reproduction(
        run_id=run_id,
        artifact_uri=new_uri,
        original_artifact_uri=original_uri,
        metrics=compare_metrics(status.get("metrics") or {}, full.get("metrics") or {}, tolerance),
        pinned={
            "dataset": training.get("dataset"),
            "seed": training.get("seed"),
            "codeVersion": training.get("codeVersion"),
            "hyperparameters": training.get("hyperparameters"),
        },
        warnings=warnings,
    )
