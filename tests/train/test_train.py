"""Training on real torch with tiny Delta tables: split, hyperparameters, reproducibility,
checkpoint fallback, the artifact contract and the Prometheus textfile."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from neuraxis.crds.trainingjob import TrainingJob
from neuraxis.lake import Lake
from neuraxis.resources import parse_resource
from neuraxis.workloads.artifact import read_signature, read_verified
from neuraxis.workloads.evaluate.heldout import load_torchscript
from neuraxis.workloads.train.checkpoint import CheckpointStore, epochs_to_delete
from neuraxis.workloads.train.data import DataError, read_table, validation_mask
from neuraxis.workloads.train.loop import train_model
from neuraxis.workloads.train.models import HyperparameterError, model_config, parse_hyperparameters
from neuraxis.workloads.train.run import load_data, run_training, train_settings

NAMESPACE = "ml"


def job(**spec: object) -> TrainingJob:
    parsed = parse_resource(
        {
            "apiVersion": "neuraxis.dev/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {"name": "detector-train"},
            "spec": {
                "datasetRef": {"name": "features"},
                "validationSplit": 0.25,
                "task": {"type": "classification", "label": "failure"},
                "model": {
                    "architecture": "mlp",
                    "epochs": 4,
                    "batchSize": 32,
                    "learningRate": 0.01,
                    "hyperparameters": {"hiddenSize": 16, "layers": 1},
                },
                **spec,
            },
        }
    )
    assert isinstance(parsed, TrainingJob)
    return parsed


def test_validation_mask_is_seeded_deterministic_and_near_the_split() -> None:
    rows = np.arange(10_000, dtype=np.int64)
    first = validation_mask(rows, 0.2, seed=7)
    assert np.array_equal(first, validation_mask(rows, 0.2, seed=7))
    assert not np.array_equal(first, validation_mask(rows, 0.2, seed=8))
    assert 0.18 < first.mean() < 0.22
    assert not validation_mask(rows, 0.0, seed=7).any()


def test_default_features_are_numeric_columns_except_label(lake: Lake) -> None:
    data = read_table(
        lake, NAMESPACE, "features", label="failure", task="classification", features=[]
    )
    assert data.features == ["temperature", "vibration", "pressure"]
    assert data.classes == ["0", "1"]
    assert data.x.dtype == torch.float32 and data.x.shape == (400, 3)


def test_bad_columns_are_named(lake: Lake) -> None:
    with pytest.raises(DataError, match=r"spec.task.features 'site' is string"):
        read_table(
            lake, NAMESPACE, "features", label="failure", task="classification", features=["site"]
        )
    with pytest.raises(DataError, match=r"spec.task.label 'broken'"):
        read_table(lake, NAMESPACE, "features", label="broken", task="classification", features=[])
    with pytest.raises(DataError, match="no Delta table"):
        read_table(lake, NAMESPACE, "missing", label="failure", task="classification", features=[])


@pytest.mark.parametrize(
    ("architecture", "raw", "message"),
    [
        ("mlp", {"hiddenSzie": 8}, r"spec.model.hyperparameters.hiddenSzie: unknown for mlp"),
        ("mlp", {"layers": 0}, r"spec.model.hyperparameters.layers: 0 is outside"),
        ("mlp", {"layers": 1.5}, r"spec.model.hyperparameters.layers: must be an integer"),
        ("mlp", {"heads": 2}, r"spec.model.hyperparameters.heads: not used by mlp"),
        ("mlp", {"dropout": "high"}, r"spec.model.hyperparameters.dropout: must be a number"),
        ("transformer", {"hiddenSize": 10, "heads": 3}, r"hiddenSize: 10 must be divisible"),
    ],
)
def test_bad_hyperparameters_name_the_field(
    architecture: str, raw: dict[str, object], message: str
) -> None:
    with pytest.raises(HyperparameterError, match=message):
        parse_hyperparameters(architecture, raw)


def test_same_spec_gives_the_same_weights(lake: Lake) -> None:
    spec = job()
    data = load_data(spec, lake, NAMESPACE)
    cfg = model_config("mlp", {"hiddenSize": 16, "layers": 1, "dropout": 0.2}, 3, 2)
    first = train_model(data, cfg, train_settings(spec, "cpu")).model.state_dict()
    second = train_model(data, cfg, train_settings(spec, "cpu")).model.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize(
    ("architecture", "hyperparameters"),
    [("mlp", {"hiddenSize": 16}), ("cnn1d", {"hiddenSize": 8}), ("transformer", {"hiddenSize": 8})],
)
def test_artifact_takes_raw_features_and_returns_probabilities(
    lake: Lake, architecture: str, hyperparameters: dict[str, int]
) -> None:
    model = {"architecture": architecture, "epochs": 2, "hyperparameters": hyperparameters}
    spec = job(model=model, register={"model": "detector", "versionName": "v1"})
    result = run_training(spec, lake, NAMESPACE, f"run-{architecture}")
    assert result is not None and result["outcome"] == "Succeeded"
    folder = Lake.model_path(NAMESPACE, "detector", "v1")
    files = read_verified(lake, folder)
    assert set(files) == {"model.pt", "model.ts", "signature.json"}
    signature = read_signature(files["signature.json"])
    assert signature.feature_names == ["temperature", "vibration", "pressure"]
    assert (signature.classes, signature.model_version) == (["0", "1"], "v1")
    module = load_torchscript(files["model.ts"])
    raw = torch.tensor([[30.0, 5.0, -2.0], [-30.0, -5.0, 2.0], [0.1, 0.2, 0.3]])
    probs = module(raw)
    assert probs.shape == (3, 2) and probs.dtype == torch.float32
    assert torch.allclose(probs.sum(dim=1), torch.ones(3), atol=1e-5)
    assert result["artifact"]["uri"] == lake.uri(folder)
    assert lake.read_json(f"runs/{NAMESPACE}/run-{architecture}/result.json")["reason"] == "Trained"


def test_regression_artifact_returns_one_prediction_per_row(tmp_path: Path) -> None:
    import pyarrow as pa
    from deltalake import write_deltalake

    lake = Lake(str(tmp_path / "lake"))
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=300), rng.normal(size=300)
    table = pa.table({"a": a, "b": b, "y": 3 * a - b})
    write_deltalake(lake.uri(Lake.table_path(NAMESPACE, "features")), table)
    spec = job(task={"type": "regression", "label": "y"})
    result = run_training(spec, lake, NAMESPACE, "reg")
    assert result is not None and "val_mae" in result["metrics"]
    files = read_verified(lake, f"runs/{NAMESPACE}/reg/model", ["model.ts"])
    out = load_torchscript(files["model.ts"])(torch.zeros(4, 2))
    assert out.shape == (4,)


def test_corrupted_checkpoint_is_reported_and_the_previous_one_used(
    lake: Lake, caplog: pytest.LogCaptureFixture
) -> None:
    spec = job()
    data = load_data(spec, lake, NAMESPACE)
    cfg = model_config("mlp", {"hiddenSize": 8, "layers": 1}, 3, 2)
    store = CheckpointStore(lake, NAMESPACE, "ckpt", keep=3)
    train_model(data, cfg, train_settings(spec, "cpu"), store=store)
    assert store.epochs() == [2, 3, 4]
    newest = lake.local_path(f"runs/{NAMESPACE}/ckpt/checkpoints/epoch-4.pt")
    newest.write_bytes(newest.read_bytes()[:-10] + b"corrupted!")
    with caplog.at_level(logging.ERROR):
        checkpoint = store.latest_valid()
    assert checkpoint is not None and checkpoint.epoch == 3
    assert "epoch-4.pt: corrupted (sha256" in caplog.text
    assert "falling back to the previous checkpoint" in caplog.text


def test_resume_skips_finished_epochs_and_ends_with_the_same_weights(lake: Lake) -> None:
    spec = job()
    data = load_data(spec, lake, NAMESPACE)
    cfg = model_config("mlp", {"hiddenSize": 8, "layers": 1, "dropout": 0.1}, 3, 2)
    settings = train_settings(spec, "cpu")
    full = train_model(data, cfg, settings).model.state_dict()
    store = CheckpointStore(lake, NAMESPACE, "resume", keep=2)
    from dataclasses import replace

    train_model(data, cfg, replace(settings, epochs=2), store=store)
    resumed = train_model(data, cfg, settings, store=store)
    assert resumed.resumed_from == 2 and len(resumed.history) == 4
    state = resumed.model.state_dict()
    assert all(torch.equal(full[k], state[k]) for k in full)


def test_keep_prunes_old_checkpoints() -> None:
    assert epochs_to_delete([1, 2, 3, 4, 5], keep=2) == [1, 2, 3]
    assert epochs_to_delete([1], keep=3) == []


def test_progress_gauges_are_written_as_a_textfile(
    lake: Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEURAXIS_METRICS_DIR", str(tmp_path / "metrics"))
    run_training(job(), lake, NAMESPACE, "prom")
    text = (tmp_path / "metrics" / "train.prom").read_text()
    assert 'neuraxis_train_epoch{namespace="ml",run_id="prom"} 4.0' in text
    assert 'neuraxis_train_progress_ratio{namespace="ml",run_id="prom"} 1.0' in text
    assert 'metric="val_accuracy"' in text


def test_pinned_dataset_version_is_read_and_recorded(lake: Lake, kit: Any) -> None:
    kit.write_table(lake, "features", rows=200, seed=3)  # version 1
    pinned = job(datasetRef={"name": "features", "version": 0})
    assert len(load_data(pinned, lake, NAMESPACE).x) == 400
    latest = load_data(job(), lake, NAMESPACE)
    assert len(latest.x) == 200 and latest.lineage is not None and latest.lineage.version == 1
