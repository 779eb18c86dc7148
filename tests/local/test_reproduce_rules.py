"""`neuraxis reproduce`'s decisions, without training: which job is run again (pinned from the
artifact's record), when a code version counts as changed, and when a metric reproduces."""

from __future__ import annotations

from typing import Any

import pytest

from neuraxis.local.reproduce import (
    TOLERANCE,
    ReproduceError,
    code_warnings,
    compare_metrics,
    pinned_job,
)
from neuraxis.operator.inputs import CR_VERSION

BODY: dict[str, Any] = {
    "apiVersion": CR_VERSION,
    "kind": "TrainingJob",
    "metadata": {"name": "train", "namespace": "ml", "uid": "0a1b2c3d-0000", "generation": 3},
    "spec": {
        "datasetRef": {"name": "readings"},
        "task": {"type": "classification", "label": "failure"},
        "model": {"architecture": "mlp", "epochs": 30, "learningRate": 0.01, "seed": 0},
        "tuning": {
            "maxTrials": 4,
            "metric": "val_loss",
            "space": {"learningRate": {"loguniform": {"min": 0.0001, "max": 0.1}}},
        },
        "register": {"model": "detector"},
    },
}
TRAINING = {
    "dataset": {"name": "readings", "version": 7, "digest": "sha256:" + "ab" * 32},
    "seed": 11,
    "validationSplit": 0.3,
    "workers": 2,
    "hyperparameters": {"hiddenSize": 64, "learningRate": 0.003, "batchSize": 16, "epochs": 12},
    "codeVersion": {"neuraxis": "0.1.0", "gitCommit": "abc"},
}


def test_the_job_is_pinned_to_what_the_artifact_records() -> None:
    job = pinned_job(BODY, TRAINING)
    spec = job.spec
    assert spec.central_dataset().name == "readings" and spec.central_dataset().version == 7
    assert spec.tuning is None and spec.register_ is None  # no search; a scratch folder
    assert spec.validation_split == 0.3 and spec.resources.workers == 2
    assert spec.model is not None
    assert (spec.model.seed, spec.model.learning_rate) == (11, 0.003)
    assert (spec.model.batch_size, spec.model.epochs) == (16, 12)
    assert spec.model.hyperparameters == {"hiddenSize": 64}


def test_an_artifact_without_a_dataset_version_cannot_be_reproduced() -> None:
    with pytest.raises(ReproduceError, match="no dataset version"):
        pinned_job(BODY, {**TRAINING, "dataset": None})


def test_a_different_code_version_is_warned_about() -> None:
    same = {"neuraxis": "0.1.0", "gitCommit": "abc"}
    assert code_warnings(same, dict(same)) == []
    [warning] = code_warnings(same, {**same, "gitCommit": "def"})
    assert "git commit abc trained the artifact, def reproduced it" in warning


def test_metrics_reproduce_within_the_tolerance_only() -> None:
    original = {"val_loss": 0.25, "val_accuracy": 0.9, "train_loss": 0.2}
    reproduced = {"val_loss": 0.25 + TOLERANCE / 2, "val_accuracy": 0.9 + 2 * TOLERANCE}
    rows = {m.metric: m for m in compare_metrics(original, reproduced, TOLERANCE)}
    assert rows["val_loss"].within
    assert not rows["val_accuracy"].within
    assert rows["train_loss"].reproduced is None and not rows["train_loss"].within
