"""Explainability and the drift profile on a real trained model: Integrated Gradients
completeness, the card's attribution section, the training profile in the artifact and PSI."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from neuraxis.crds.modelversion import ModelVersion
from neuraxis.lake import Lake
from neuraxis.resources import parse_resource
from neuraxis.workloads.artifact import read_manifest
from neuraxis.workloads.drift import PSI_THRESHOLD, DriftWindow, build_profile, psi, read_profile
from neuraxis.workloads.evaluate.heldout import load_artifact
from neuraxis.workloads.evaluate.run import run_evaluation
from neuraxis.workloads.explain import baseline_for, gradient_error, integrated_gradients
from neuraxis.workloads.train.run import run_training

# Completeness of IG (attributions sum to output(x) - output(baseline)) holds exactly for the
# integral; 128 Gauss-Legendre steps on a ReLU MLP leave about 0.01 of a probability at most.
COMPLETENESS_TOLERANCE = 0.02
FOLDER = "models/ml/detector/{version}"


def trained(kit: Any, lake: Lake, version: str) -> str:
    spec = kit.job(
        model={"architecture": "mlp", "epochs": 6, "learningRate": 0.02},
        register={"model": "detector", "versionName": version},
    )
    result = run_training(spec, lake, kit.namespace, f"train-{version}")
    assert result is not None
    root = lake.root.rstrip("/") + "/"
    return str(result["artifact"]["uri"])[len(root) :]


def model_version(kit: Any, name: str) -> ModelVersion:
    parsed = parse_resource(kit.model_version(name, [{"metric": "accuracy", "min": 0.5}]))
    assert isinstance(parsed, ModelVersion)
    return parsed


def test_artifact_carries_the_training_profile(lake: Lake, kit: Any) -> None:
    folder = trained(kit, lake, "profiled")
    assert "profile.json" in read_manifest(lake, folder)
    profile = read_profile(lake, folder)
    assert profile is not None
    assert [f.name for f in profile.features] == ["temperature", "vibration", "pressure"]
    artifact = load_artifact(lake, folder)
    train_rows = artifact.training.get("splitRows", {}).get("train", profile.rows)
    assert profile.rows == train_rows < 400  # the training rows only, not validation or test
    for feature in profile.features:
        assert sum(feature.counts) == profile.rows
        assert len(feature.counts) == len(feature.edges) + 1 == 10
        assert feature.edges == sorted(feature.edges)
        assert abs(feature.mean) < 0.3  # the table's features are standard normal


def test_attributions_sum_to_prediction_minus_baseline(lake: Lake, kit: Any) -> None:
    folder = trained(kit, lake, "explained")
    artifact = load_artifact(lake, folder)
    module = artifact.torchscript()
    sig = artifact.signature
    assert gradient_error(module, len(sig.features)) is None
    baseline = baseline_for(read_profile(lake, folder), len(sig.features))
    assert baseline.kind == "training-mean"
    x = torch.tensor(np.random.default_rng(7).normal(size=(50, 3)), dtype=torch.float32)
    explanation = integrated_gradients(module, x, baseline, "classification")

    with torch.no_grad():
        probs = module(x)
        base_probs = module(torch.tensor([baseline.values] * len(x)))
    assert explanation.targets == probs.argmax(dim=1).tolist()
    rows = torch.arange(len(x))
    targets = torch.tensor(explanation.targets)
    output = probs[rows, targets].double().numpy()
    base_output = base_probs[rows, targets].double().numpy()
    np.testing.assert_allclose(explanation.outputs, output, atol=1e-6)
    residual = explanation.attributions.sum(axis=1) - (output - base_output)
    assert np.abs(residual).max() < COMPLETENESS_TOLERANCE, residual
    np.testing.assert_allclose(explanation.deltas, residual, atol=1e-5)
    # The label depends on temperature + vibration only: pressure gets the least attribution.
    mean_abs = np.abs(explanation.attributions).mean(axis=0)
    assert mean_abs[2] < min(mean_abs[0], mean_abs[1]), mean_abs


def test_card_has_the_attribution_table_plot_baseline_and_delta(lake: Lake, kit: Any) -> None:
    folder = trained(kit, lake, "carded")
    mv = model_version(kit, "carded")
    result = run_evaluation(mv, lake, kit.namespace, "eval-carded", artifact_uri=lake.uri(folder))
    attributions = result["evaluation"]["attributions"]
    assert attributions["baseline"]["kind"] == "training-mean"
    assert {f["name"] for f in attributions["features"]} == {"temperature", "vibration", "pressure"}
    assert attributions["features"][-1]["name"] == "pressure"  # least important last
    assert attributions["convergenceDelta"]["maxAbs"] < COMPLETENESS_TOLERANCE
    assert attributions["rows"] == min(attributions["sampledFrom"], 256)
    card_folder = result["cardUri"].rsplit("/", 1)[0]
    root = lake.root.rstrip("/") + "/"
    card_folder = card_folder[len(root) :]
    card = lake.read_json(f"{card_folder}/card.json")
    assert card["evaluation"]["attributions"] == attributions
    markdown = lake.read_bytes(f"{card_folder}/card.md").decode()
    assert "## Feature attributions" in markdown
    assert "| feature | mean |attribution| | mean attribution | baseline |" in markdown
    assert "| pressure |" in markdown and "Convergence delta" in markdown
    assert "the training mean of each feature" in markdown
    png = lake.read_bytes(f"{card_folder}/plots/feature_attributions.png")
    assert png.startswith(b"\x89PNG")


def test_psi_separates_a_shifted_sample_from_the_training_distribution() -> None:
    rng = np.random.default_rng(0)
    profile = build_profile(["a", "b"], rng.normal(size=(5000, 2)))
    false_positives = 0
    for seed in range(20):
        window = DriftWindow(profile, size=500)
        window.observe(np.random.default_rng(100 + seed).normal(size=(500, 2)).tolist())
        values = window.psi()
        assert values is not None
        false_positives += sum(v > PSI_THRESHOLD for v in values.values())
    assert false_positives == 0
    shifted = np.random.default_rng(1).normal(size=(500, 2))
    shifted[:, 0] += 1.0  # one standard deviation
    window = DriftWindow(profile, size=500)
    window.observe(shifted[:499].tolist())
    assert window.psi() is None  # not exported before the window is full
    window.observe(shifted[499:].tolist())
    values = window.psi()
    assert values is not None and values["a"] > PSI_THRESHOLD > values["b"]
    # An empty bin costs a large but finite term (epsilon).
    assert np.isfinite(psi(np.array([10.0, 10.0]), np.array([20.0, 0.0])))


def test_edge_bundle_carries_the_artifacts_profile(lake: Lake, kit: Any) -> None:
    from neuraxis.workloads.artifact import read_verified
    from neuraxis.workloads.bundle.run import build_edge_bundle

    folder = trained(kit, lake, "bundled")
    result = build_edge_bundle(
        lake, kit.namespace, "detector", "bundled", "bundle-1", source_folder=folder
    )
    root = lake.root.rstrip("/") + "/"
    bundle = str(result["bundle"]["uri"])[len(root) :]
    shipped = read_verified(lake, bundle, ["profile.json"])["profile.json"]
    assert shipped == read_verified(lake, folder, ["profile.json"])["profile.json"]


def test_regression_attributions_of_a_linear_model_are_exact() -> None:
    """For y = w.x + c, IG gives w_j * (x_j - b_j) exactly (the gradient is constant)."""
    from neuraxis.workloads.explain import Baseline

    linear = torch.nn.Linear(3, 1)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[2.0, -1.0, 0.5]]))
        linear.bias.fill_(3.0)
    module = torch.jit.trace(linear.eval(), torch.zeros(2, 3))  # type: ignore[no-untyped-call]
    baseline = Baseline("training-mean", [1.0, 0.0, -2.0])
    x = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    explanation = integrated_gradients(module, x, baseline, "regression")
    expected = np.array([[2.0, -1.0, 1.0], [-2.0, 0.0, 1.0]])
    np.testing.assert_allclose(explanation.attributions, expected, atol=1e-5)
    assert explanation.targets is None
    np.testing.assert_allclose(explanation.outputs - explanation.baseline_outputs, [2.0, -1.0])
    assert np.abs(explanation.deltas).max() < 1e-5
