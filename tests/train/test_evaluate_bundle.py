"""Evaluation gates, the model card and the edge bundle, on a real trained model."""

from __future__ import annotations

import json
from typing import Any

import pytest

from neuraxis.crds.modelversion import Gate, ModelVersion
from neuraxis.lake import Lake
from neuraxis.resources import parse_resource
from neuraxis.workloads.artifact import ArtifactChangedError, ArtifactIntegrityError, read_verified
from neuraxis.workloads.bundle.compress import MAX_SIZE_RATIO
from neuraxis.workloads.bundle.run import build_edge_bundle
from neuraxis.workloads.evaluate.gates import check_gate, gates_summary
from neuraxis.workloads.evaluate.heldout import folder_of
from neuraxis.workloads.evaluate.run import run_evaluation
from neuraxis.workloads.train.run import run_training

GATES = [
    {"metric": "accuracy", "min": 0.8},
    {"metric": "roc_auc", "min": 0.75},
    {"metric": "latency_p99_ms", "max": 1000},
]


def train(kit: Any, lake: Lake, version: str, **model: Any) -> str:
    """Train and register `version`; its artifact folder (run-unique, so a retrain never
    rewrites it): models/ml/detector/<version>/<run id>."""
    settings = {"architecture": "mlp", "epochs": 6, "learningRate": 0.02, **model}
    spec = kit.job(model=settings, register={"model": "detector", "versionName": version})
    result = run_training(spec, lake, kit.namespace, f"train-{version}")
    assert result is not None
    folder = folder_of(lake, result["artifact"]["uri"])
    assert folder == f"models/ml/detector/{version}/train-{version}"
    return folder


def version(kit: Any, name: str, gates: list[dict[str, Any]]) -> ModelVersion:
    parsed = parse_resource(kit.model_version(name, gates))
    assert isinstance(parsed, ModelVersion)
    return parsed


def test_gate_reasons_carry_metric_value_and_threshold() -> None:
    low = check_gate(Gate(metric="accuracy", min=0.8), {"accuracy": 0.71})
    assert not low.passed and low.reason == "accuracy 0.71 < min 0.8"
    slow = check_gate(Gate(metric="latency_p99_ms", max=50), {"latency_p99_ms": 61.5})
    assert slow.reason == "latency_p99_ms 61.5 > max 50"
    missing = check_gate(Gate(metric="r2", min=0.5), {"accuracy": 0.9})
    assert not missing.passed and "r2 was not computed" in missing.reason
    assert gates_summary([low, slow]) == (
        False,
        "accuracy 0.71 < min 0.8; latency_p99_ms 61.5 > max 50",
    )


def test_gates_reject_a_deliberately_bad_model(lake: Lake, kit: Any) -> None:
    # A learning rate of 1e-6 for one epoch leaves the random initial weights in place.
    folder = train(kit, lake, "bad", epochs=1, learningRate=0.000001)
    mv = version(kit, "bad", GATES)
    result = run_evaluation(mv, lake, kit.namespace, "eval-bad", artifact_uri=lake.uri(folder))
    assert result["outcome"] == "Succeeded" and result["reason"] == "GatesFailed"
    assert result["passed"] is False
    accuracy = result["metrics"]["accuracy"]
    assert f"accuracy {accuracy:.4g} < min 0.8" in result["message"]
    gate = next(g for g in result["gates"] if g["metric"] == "accuracy")
    assert gate == {**gate, "passed": False, "min": 0.8}
    stored = lake.read_json(f"runs/{kit.namespace}/eval-bad/result.json")
    assert stored["reason"] == "GatesFailed"


def test_good_model_passes_and_card_names_the_dataset_version(lake: Lake, kit: Any) -> None:
    kit.write_table(lake, "features", rows=400, seed=5)  # table version 1
    folder = train(kit, lake, "good")
    mv = version(kit, "good", GATES)
    result = run_evaluation(mv, lake, kit.namespace, "eval-good", artifact_uri=lake.uri(folder))
    assert result["passed"] is True, result["message"]
    metrics = result["metrics"]
    for name in (
        "accuracy",
        "precision",
        "recall",
        "f1",
        "roc_auc",
        "latency_p50_ms",
        "latency_p99_ms",
    ):
        assert metrics[name] >= 0, name
    assert len(result["evaluation"]["confusionMatrix"]) == 2
    assert len(result["evaluation"]["calibration"]["bins"]) == 10
    card_folder = f"{folder}/card"
    card = lake.read_json(f"{card_folder}/card.json")
    assert card["lineage"]["dataset"]["name"] == "features"
    assert card["lineage"]["dataset"]["version"] == 1
    assert card["lineage"]["dataset"]["digest"].startswith("sha256:")
    assert card["lineage"]["trainingJob"] == "detector-train"
    assert card["owners"] == ["team@example.com"]
    markdown = lake.read_bytes(f"{card_folder}/card.md").decode()
    assert "- Dataset: features version 1 (sha256:" in markdown
    assert "| accuracy |" in markdown and "Overall: passed" in markdown
    for plot in ("training_curves.png", "roc.png", "confusion_matrix.png"):
        assert lake.read_bytes(f"{card_folder}/plots/{plot}").startswith(b"\x89PNG"), plot


def test_tampered_artifact_is_not_evaluated(lake: Lake, kit: Any) -> None:
    folder = train(kit, lake, "tampered", epochs=1)
    path = lake.local_path(f"{folder}/model.ts")
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ArtifactChangedError, match=r"model\.ts: sha256 mismatch"):
        run_evaluation(
            version(kit, "tampered", GATES),
            lake,
            kit.namespace,
            "eval-t",
            artifact_uri=lake.uri(folder),
        )


def test_tiny_model_bundle_ships_fp32_with_the_reason_and_refuses_tampering(
    lake: Lake, kit: Any
) -> None:
    source = train(kit, lake, "edge")  # the demo's size: 3 features, 16 hidden units, one layer
    mv = version(kit, "edge", GATES)
    run_evaluation(mv, lake, kit.namespace, "eval-edge", artifact_uri=lake.uri(source))
    result = build_edge_bundle(
        lake, kit.namespace, "detector", "edge", "bundle-edge", source_folder=source
    )
    edge = result["edge"]
    # int8 was built and measured, but its packed weights and per-channel scales outweigh the
    # bytes a 3-16-2 MLP saves: fp32 ships and the result says why.
    assert edge["requested"] == "int8" and edge["quantize"] == "none"
    assert edge["int8Bytes"] > MAX_SIZE_RATIO * edge["fp32Bytes"]
    assert edge["reason"].startswith(f"int8 TorchScript is {edge['int8Bytes']} bytes")
    assert edge["reason"].endswith("; fp32 ships")
    assert edge["metric"] == "accuracy" and abs(edge["change"]) < 0.1
    assert edge["latency"]["ratio"] > 0
    folder = folder_of(lake, result["bundle"]["uri"])
    files = read_verified(lake, folder)
    assert {"model.ts", "signature.json", "compression.json"} <= set(files)
    assert folder_of(lake, result["source"]["uri"]) == source
    artifact_files = read_verified(lake, source, ["model.ts"])
    assert files["model.ts"] == artifact_files["model.ts"]  # the fp32 TorchScript itself
    assert json.loads(files["compression.json"])["reason"] == edge["reason"]
    card = lake.read_json(f"{source}/card/card.json")
    assert card["edge"]["digest"] == result["bundle"]["digest"]
    assert card["edge"]["reason"] == edge["reason"]
    markdown = lake.read_bytes(f"{source}/card/card.md").decode()
    assert "## Edge bundle" in markdown and f"- Ships: fp32 ({edge['reason']})" in markdown
    assert "| TorchScript bytes |" in markdown
    path = lake.local_path(f"{folder}/model.ts")
    path.write_bytes(path.read_bytes()[:-4] + b"evil")
    with pytest.raises(ArtifactIntegrityError, match=r"model\.ts: sha256 mismatch"):
        read_verified(lake, folder)
