"""What one site does, as plain functions (the ClientApp only wires them to Flower): read its own
Dataset version, summarise it for the global normalisation, and train one round with the
platform's training loop (workloads/train/loop.py) starting from the global weights.

Only trainable parameters travel between sites and server, as a list of arrays in the model's
`named_parameters` order; the normalisation buffers are fixed for the whole run (they come with
the round's config), so differential-privacy noise never lands on them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from neuraxis.crds.common import DatasetRef
from neuraxis.crds.trainingjob import TrainingJob
from neuraxis.lake import Lake
from neuraxis.workloads.train.data import TabularData, read_table
from neuraxis.workloads.train.loop import TrainSettings, WarmStart, train_model
from neuraxis.workloads.train.models import ModelConfig, TrainableModel, build_model, model_config

Arrays = list[npt.NDArray[np.float32]]


@dataclass(frozen=True)
class Normalization:
    """The global feature statistics every site's model uses."""

    mean: list[float]
    std: list[float]

    def to_json(self) -> str:
        return json.dumps({"mean": self.mean, "std": self.std})

    @classmethod
    def from_json(cls, text: str) -> Normalization:
        raw = json.loads(text)
        return cls(mean=[float(v) for v in raw["mean"]], std=[float(v) for v in raw["std"]])


def read_site_data(
    lake: Lake, namespace: str, job: TrainingJob, ref: DatasetRef, classes: list[str] | None
) -> TabularData:
    """The site's own table version, without its test rows (they stay for evaluation)."""
    spec = job.spec
    assert spec.model is not None  # federation requires a built-in model (API rule)
    return read_table(
        lake,
        namespace,
        ref.name,
        label=spec.task.label,
        task=spec.task.type,
        features=spec.task.features,
        version=ref.version,
        validation_split=spec.validation_split,
        test_split=spec.test_split,
        seed=spec.model.seed,
        classes=classes,
        single_class_ok=True,
    ).without_test()


def site_summary(data: TabularData) -> dict[str, Any]:
    """What a site shares once before round 1: row count, per-feature sums and sums of squares
    of its training rows (no row), its label values and its data version."""
    x = data.train_x.double()
    lineage = data.lineage
    return {
        "rows": len(x),
        "features": data.features,
        "sum": x.sum(0).tolist(),
        "sumsq": (x * x).sum(0).tolist(),
        "classes": data.classes,
        "dataset": lineage.name if lineage else None,
        "datasetVersion": lineage.version if lineage else None,
        "datasetDigest": lineage.digest if lineage else None,
    }


def global_normalization(summaries: list[dict[str, Any]]) -> Normalization:
    """Pooled mean and standard deviation over every site's training rows."""
    rows = sum(int(s["rows"]) for s in summaries)
    total = np.sum([s["sum"] for s in summaries], axis=0)
    total_sq = np.sum([s["sumsq"] for s in summaries], axis=0)
    mean = total / rows
    var = np.maximum(total_sq / rows - mean * mean, 0.0)
    return Normalization(mean=mean.tolist(), std=np.sqrt(var).tolist())


def global_classes(job: TrainingJob, summaries: list[dict[str, Any]]) -> list[str]:
    if job.spec.task.type != "classification":
        return []
    return sorted({c for s in summaries for c in s["classes"]})


def build_global_model(
    job: TrainingJob, n_features: int, classes: list[str], norm: Normalization
) -> tuple[TrainableModel, ModelConfig]:
    """The initial global model: the spec's architecture and seed, the pooled normalisation."""
    spec = job.spec.model
    assert spec is not None
    n_outputs = len(classes) if job.spec.task.type == "classification" else 1
    cfg = model_config(spec.architecture, dict(spec.hyperparameters), n_features, n_outputs)
    torch.manual_seed(spec.seed)
    model = build_model(cfg, torch.tensor(norm.mean), torch.tensor(norm.std))
    return model, cfg


def get_arrays(model: TrainableModel) -> Arrays:
    return [p.detach().cpu().numpy().astype(np.float32) for p in model.parameters()]


def set_arrays(model: TrainableModel, arrays: Arrays) -> None:
    params = list(model.parameters())
    if len(params) != len(arrays):
        raise ValueError(f"expected {len(params)} parameter arrays, got {len(arrays)}")
    with torch.no_grad():
        for p, a in zip(params, arrays, strict=True):
            p.copy_(torch.from_numpy(np.asarray(a, dtype=np.float32)).reshape(p.shape))


def train_round(
    job: TrainingJob,
    data: TabularData,
    arrays: Arrays,
    norm: Normalization,
    *,
    local_epochs: int,
    server_round: int,
    proximal_mu: float = 0.0,
) -> tuple[Arrays, int, dict[str, float]]:
    """One round at a site: the global weights in, the locally trained weights out, with the
    number of training rows (the FedAvg weight) and the last epoch's metrics."""
    spec = job.spec.model
    assert spec is not None
    model, cfg = build_global_model(job, len(data.features), data.classes, norm)
    set_arrays(model, arrays)
    settings = TrainSettings(
        epochs=local_epochs,
        batch_size=spec.batch_size,
        learning_rate=spec.learning_rate,
        # A different shuffle per round, the same on a rerun.
        seed=spec.seed + server_round,
    )
    outcome = train_model(
        data,
        cfg,
        settings,
        warm_start=WarmStart(state=model.state_dict(), proximal_mu=proximal_mu),
    )
    metrics = {k: float(v) for k, v in outcome.history[-1].items() if k != "epoch"}
    return get_arrays(outcome.model), len(data.train_x), metrics
