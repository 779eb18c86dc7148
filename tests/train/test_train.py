"""Training on real torch with tiny Delta tables: split, hyperparameters, reproducibility,
checkpoint fallback, the artifact contract and the Prometheus textfile."""

from __future__ import annotations

import io
import json
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from neuraxis.crds.trainingjob import TrainingJob
from neuraxis.lake import Lake, LakeError
from neuraxis.resources import parse_resource
from neuraxis.workloads.artifact import read_signature, read_verified
from neuraxis.workloads.evaluate.heldout import load_torchscript
from neuraxis.workloads.train.checkpoint import (
    CheckpointSchedule,
    CheckpointStore,
    epochs_to_delete,
)
from neuraxis.workloads.train.data import (
    TEST,
    TRAIN,
    VALIDATION,
    DataError,
    assign_splits,
    read_table,
)
from neuraxis.workloads.train.loop import train_model
from neuraxis.workloads.train.models import HyperparameterError, model_config, parse_hyperparameters
from neuraxis.workloads.train.run import load_data, run_training, train_settings
from tests.train.conftest import write_delta

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


def test_splits_are_seeded_deterministic_disjoint_and_near_their_fractions() -> None:
    rows = np.arange(10_000, dtype=np.int64)
    first = assign_splits(rows, 0.2, 0.15, seed=7)
    assert np.array_equal(first, assign_splits(rows, 0.2, 0.15, seed=7))
    assert not np.array_equal(first, assign_splits(rows, 0.2, 0.15, seed=8))
    assert 0.18 < (first == VALIDATION).mean() < 0.22
    assert 0.13 < (first == TEST).mean() < 0.17
    assert set(np.unique(first)) == {TRAIN, VALIDATION, TEST}
    # The test rows do not depend on the validation share: tuning choices cannot move them.
    assert np.array_equal(first == TEST, assign_splits(rows, 0.3, 0.15, seed=7) == TEST)
    assert not (assign_splits(rows, 0.2, 0.0, seed=7) == TEST).any()
    with pytest.raises(ValueError, match="below 1"):
        assign_splits(rows, 0.6, 0.4, seed=7)


def test_training_never_sees_test_rows_and_records_the_split(lake: Lake) -> None:
    spec = job(testSplit=0.2)
    full = load_data(spec, lake, NAMESPACE)
    rows = full.split_rows()
    assert rows["test"] > 0 and sum(rows.values()) == len(full.x)
    trained = full.without_test()
    assert len(trained.x) == rows["train"] + rows["validation"]
    assert not (trained.split == TEST).any()
    result = run_training(spec, lake, NAMESPACE, "split")
    assert result is not None
    folder = result["artifact"]["uri"].removeprefix(lake.root.rstrip("/") + "/")
    payload = torch.load(
        io.BytesIO(read_verified(lake, folder, ["model.pt"])["model.pt"]), weights_only=True
    )
    training = payload["config"]["training"]
    assert (training["validationSplit"], training["testSplit"]) == (0.25, 0.2)
    assert training["splitSeed"] == 42 and training["splitRows"] == rows


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


def test_lineage_digest_is_the_one_recorded_in_the_commit(lake: Lake) -> None:
    from deltalake import DeltaTable

    uri = lake.uri(Lake.table_path(NAMESPACE, "features"))
    data = read_table(
        lake, NAMESPACE, "features", label="failure", task="classification", features=[]
    )
    recorded = json.loads(DeltaTable(uri).history()[-1]["userMetadata"])["digest"]
    assert data.lineage is not None and data.lineage.digest == recorded
    # A version no Dataset run wrote has no digest: an error, never a substitute.
    write_delta(lake, "features", DeltaTable(uri).to_pyarrow_table(), digest=False)
    with pytest.raises(DataError, match=rf"{uri}: version 1 records no content digest"):
        read_table(lake, NAMESPACE, "features", label="failure", task="classification", features=[])
    # The older version keeps its own.
    older = read_table(
        lake, NAMESPACE, "features", label="failure", task="classification", features=[], version=0
    )
    assert older.lineage is not None and older.lineage.digest == recorded


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
    # Run-unique: the run id is in the path, so a retrain never rewrites these files.
    folder = f"{Lake.model_path(NAMESPACE, 'detector', 'v1')}/run-{architecture}"
    files = read_verified(lake, folder)
    assert set(files) == {"model.pt", "model.ts", "signature.json", "profile.json"}
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

    lake = Lake(str(tmp_path / "lake"))
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=300), rng.normal(size=300)
    table = pa.table({"a": a, "b": b, "y": 3 * a - b})
    write_delta(lake, "features", table)
    spec = job(task={"type": "regression", "label": "y"})
    result = run_training(spec, lake, NAMESPACE, "reg")
    assert result is not None and "val_mae" in result["metrics"]
    files = read_verified(lake, f"runs/{NAMESPACE}/reg/model", ["model.ts"])
    out = load_torchscript(files["model.ts"])(torch.zeros(4, 2))
    assert out.shape == (4,)


def test_corrupted_checkpoint_is_reported_and_the_previous_one_used(
    lake: Lake, caplog: pytest.LogCaptureFixture
) -> None:
    spec = job(checkpoint={"everyEpochs": 1})
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
    spec = job(checkpoint={"everyEpochs": 1})
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


def test_a_background_checkpoint_holds_the_state_of_its_epoch(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write overlaps the next epoch, so the state must be copied when it is handed over:
    a parameter changed after save_in_background (here: before the writer may start) is not in
    the checkpoint."""
    store = CheckpointStore(lake, NAMESPACE, "copy", keep=2)
    may_write, write = threading.Event(), store.save

    def save_when_allowed(epoch: int, state: dict[str, Any]) -> str:
        assert may_write.wait(timeout=30)
        return write(epoch, state)

    monkeypatch.setattr(store, "save", save_when_allowed)
    weights, history = torch.zeros(3), [{"epoch": 1.0}]
    store.save_in_background(1, {"model": {"w": weights}, "history": history})
    weights.add_(1.0)
    history.append({"epoch": 2.0})
    may_write.set()
    store.wait()
    saved = store.load(1).state
    assert torch.equal(saved["model"]["w"], torch.zeros(3))
    assert saved["history"] == [{"epoch": 1.0}]


def test_a_failed_background_checkpoint_fails_the_training_run(lake: Lake) -> None:
    spec = job(checkpoint={"everyEpochs": 1})
    data = load_data(spec, lake, NAMESPACE)
    cfg = model_config("mlp", {"hiddenSize": 8, "layers": 1}, 3, 2)
    blocked = lake.local_path(f"runs/{NAMESPACE}/blocked/checkpoints")
    blocked.parent.mkdir(parents=True)
    blocked.write_text("a file where the checkpoint folder should be")
    store = CheckpointStore(lake, NAMESPACE, "blocked", keep=2)
    with pytest.raises(LakeError, match=r"cannot write .*blocked/checkpoints/epoch-1\.pt"):
        train_model(data, cfg, train_settings(spec, "cpu"), store=store)


def test_checkpoint_cadence_defaults_to_an_interval_unless_epochs_are_given() -> None:
    assert job().spec.checkpoint.cadence() == (1, 30)
    assert job(checkpoint={"everyEpochs": 2}).spec.checkpoint.cadence() == (2, 0)
    both = job(checkpoint={"everyEpochs": 2, "intervalSeconds": 10})
    assert both.spec.checkpoint.cadence() == (2, 10)
    assert job(checkpoint={"intervalSeconds": 0}).spec.checkpoint.cadence() == (1, 0)


def test_checkpoint_schedule_waits_for_the_interval_and_the_epoch_count() -> None:
    # The first due epoch always gets one; then the interval counts from the previous one.
    timed = CheckpointSchedule(every=1, interval_s=30)
    ends = {1: 110.0, 2: 131.0, 3: 140.0, 4: 160.0, 5: 171.5}
    assert [e for e, t in ends.items() if timed.due(e, t)] == [1, 3, 5]
    counted = CheckpointSchedule(every=2, interval_s=0)
    assert [e for e in range(1, 7) if counted.due(e, 100.0)] == [2, 4, 6]
    both = CheckpointSchedule(every=2, interval_s=30)
    ends = {1: 140.0, 2: 141.0, 3: 150.0, 4: 160.0, 5: 171.0, 6: 172.0}
    assert [e for e, t in ends.items() if both.due(e, t)] == [2, 6]


def test_training_writes_checkpoints_at_the_cadence_of_the_spec(lake: Lake) -> None:
    cfg = model_config("mlp", {"hiddenSize": 8, "layers": 1}, 3, 2)
    for run_id, checkpoint, written in (
        ("hourly", {"intervalSeconds": 3600}, [1]),
        ("even", {"everyEpochs": 2}, [2, 4]),
    ):
        spec = job(checkpoint=checkpoint)
        store = CheckpointStore(lake, NAMESPACE, run_id, keep=3)
        train_model(load_data(spec, lake, NAMESPACE), cfg, train_settings(spec, "cpu"), store=store)
        assert store.epochs() == written, run_id


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
