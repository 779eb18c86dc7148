"""int8 for every architecture's Linear, Conv1d and attention weights, and the bundle's choice
between int8 and fp32 (size, held-out metric), on real trained models."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from torch import nn

from neuraxis.lake import Lake
from neuraxis.workloads.artifact import read_verified
from neuraxis.workloads.bundle.compress import (
    ACCURACY_TOLERANCE,
    MAX_SIZE_RATIO,
    choose,
)
from neuraxis.workloads.bundle.quantize import edge_form, quantize_int8
from neuraxis.workloads.bundle.run import COMPRESSION, build_edge_bundle
from neuraxis.workloads.evaluate.heldout import folder_of, load_artifact, load_heldout
from neuraxis.workloads.serve.model_loader import model_from_files
from neuraxis.workloads.train.models import build_model, model_config, serving_module
from neuraxis.workloads.train.run import run_training

# Large enough that int8 pays (the int8 TorchScript well under MAX_SIZE_RATIO of fp32), small
# enough to train in seconds on the 3-feature test table.
LARGE = {
    "mlp": {"hiddenSize": 256, "layers": 2},
    "cnn1d": {"hiddenSize": 128, "layers": 2, "kernelSize": 3},
    "transformer": {"hiddenSize": 96, "layers": 2, "heads": 4},
}


def untrained(architecture: str, hyperparameters: dict[str, Any], n_features: int = 7) -> nn.Module:
    torch.manual_seed(0)
    cfg = model_config(architecture, hyperparameters, n_features, 3)
    model = build_model(cfg, torch.randn(n_features), torch.rand(n_features) + 0.5)
    return serving_module(model, "classification").eval()


@pytest.mark.parametrize(
    ("architecture", "hyperparameters"),
    [
        ("cnn1d", {"kernelSize": 3}),
        ("cnn1d", {"kernelSize": 4, "layers": 3}),  # even kernel: the output is one longer
        ("transformer", {"heads": 4, "layers": 3}),
    ],
)
def test_edge_form_computes_the_same_function(
    architecture: str, hyperparameters: dict[str, Any]
) -> None:
    module = untrained(architecture, hyperparameters)
    rewritten = edge_form(module)
    assert not any(isinstance(m, nn.Conv1d | nn.MultiheadAttention) for m in rewritten.modules())
    x = torch.randn(9, 7) * 3
    with torch.no_grad():
        torch.testing.assert_close(rewritten(x), module(x), atol=1e-5, rtol=1e-5)


def test_edge_form_matches_norm_first_gelu_encoders_and_padding_modes() -> None:
    torch.manual_seed(1)
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, activation="gelu", norm_first=True)
    encoder = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(32), enable_nested_tensor=False)
    tokens = torch.randn(5, 6, 32)  # [sequence, batch, dim]: batch_first is False here
    convs = [nn.Conv1d(4, 8, 5, padding="same"), nn.Conv1d(4, 8, 2, padding="valid")]
    signal = torch.randn(3, 4, 11)
    with torch.no_grad():
        torch.testing.assert_close(
            edge_form(encoder)(tokens), encoder.eval()(tokens), atol=1e-5, rtol=1e-5
        )
        for conv in convs:
            torch.testing.assert_close(edge_form(conv)(signal), conv(signal), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("architecture", "linears"),
    # mlp: 2 hidden + head; cnn1d: 2 convolutions + head; transformer: value embedding,
    # q/k/v/out and 2 feed-forward Linears per layer (2 layers), head.
    [("mlp", 3), ("cnn1d", 3), ("transformer", 1 + 2 * 6 + 1)],
)
def test_quantize_int8_leaves_no_fp32_weight_layer(architecture: str, linears: int) -> None:
    quantized = quantize_int8(untrained(architecture, {}))
    assert quantized.fp32_layers == []
    assert len(quantized.int8_layers) == linears
    if architecture == "transformer":
        assert any(name.endswith("attention.q") for name in quantized.int8_layers)


def test_choice_ships_fp32_with_the_reason_when_int8_does_not_pay() -> None:
    larger = choose("accuracy", 0.9, 0.9, 22_000, 26_000)
    assert larger.ship == "none"
    assert larger.reason == (
        "int8 TorchScript is 26000 bytes, 118% of fp32 (22000 bytes): larger than fp32; fp32 ships"
    )
    small_saving = choose("accuracy", 0.9, 0.9, 10_000, 8_000)
    assert small_saving.ship == "none" and "more than the 75% limit" in small_saving.reason
    drop = choose("accuracy", 0.95, 0.95 - ACCURACY_TOLERANCE - 0.01, 100_000, 30_000)
    assert drop.ship == "none"
    assert "below fp32 0.9500, more than the 0.02 tolerance; fp32 ships" in drop.reason
    rmse = choose("rmse", 1.0, 1.2, 100_000, 30_000)
    assert rmse.ship == "none" and "20% above fp32" in rmse.reason
    fine = choose("rmse", 1.0, 1.01, 100_000, 30_000)
    assert fine.ship == "int8" and fine.reason.startswith("int8 is 30% of fp32 size")


def _train(kit: Any, lake: Lake, architecture: str) -> tuple[str, str]:
    """Train and register a LARGE model; returns its version name and artifact folder."""
    name = f"big-{architecture}"
    model = {
        "architecture": architecture,
        "epochs": 8,
        "learningRate": 0.003,
        "hyperparameters": LARGE[architecture],
    }
    spec = kit.job(model=model, register={"model": "detector", "versionName": name})
    result = run_training(spec, lake, kit.namespace, f"train-{name}")
    assert result is not None
    return name, folder_of(lake, result["artifact"]["uri"])


@pytest.mark.parametrize("architecture", ["mlp", "cnn1d", "transformer"])
def test_large_models_ship_int8_that_loads_and_predicts_like_fp32(
    lake: Lake, kit: Any, architecture: str
) -> None:
    version, source = _train(kit, lake, architecture)
    result = build_edge_bundle(
        lake, kit.namespace, "detector", version, f"bundle-{version}", source_folder=source
    )
    edge = result["edge"]
    assert edge["quantize"] == "int8", edge["reason"]
    assert edge["int8Bytes"] <= MAX_SIZE_RATIO * edge["fp32Bytes"]
    assert edge["sizeRatio"] == pytest.approx(edge["int8Bytes"] / edge["fp32Bytes"], abs=1e-4)
    assert edge["fp32Layers"] == [] and edge["int8Layers"]
    assert edge["change"] >= -ACCURACY_TOLERANCE
    assert edge["latency"]["fp32Ms"] > 0 and edge["latency"]["int8Ms"] > 0
    stored = lake.read_json(f"runs/{kit.namespace}/bundle-{version}/result.json")
    assert stored["edge"]["sizeRatio"] == edge["sizeRatio"]

    folder = folder_of(lake, result["bundle"]["uri"])
    files = read_verified(lake, folder)
    assert json.loads(files[COMPRESSION])["reason"] == edge["reason"]
    assert b"quantized" in files["model.ts"]  # the dynamic int8 Linear ops are in the graph
    assert len(files["model.ts"]) == edge["int8Bytes"] == edge["shippedBytes"]
    # The loader the server and the edge agent use, on the held-out rows.
    served = model_from_files("detector", result["bundle"]["digest"], files)
    artifact = load_artifact(lake, source)
    rows = load_heldout(lake, kit.namespace, artifact).x
    with torch.no_grad():
        fp32 = artifact.torchscript()(rows)
    # One row per request, as at the edge: the activations' int8 scale is this row's own range.
    one_by_one = torch.cat([served.forward([row]) for row in rows.tolist()])
    torch.testing.assert_close(one_by_one, fp32, atol=0.05, rtol=0)
    # A batch shares one activation scale (dynamic quantization), so rows far from the batch's
    # extremes lose resolution: close on average, the same label almost everywhere.
    batch = served.forward(rows.tolist())
    assert (batch - fp32).abs().mean() < 0.02
    assert (batch.argmax(1) == fp32.argmax(1)).float().mean() >= 0.97
