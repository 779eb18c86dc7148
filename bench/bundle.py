"""Edge bundle compression: for each architecture, a model of at least 1 M parameters (built by
the platform's model builders, trained briefly by its training loop on synthetic data), its fp32
TorchScript (the baseline) against the int8 the bundle builds (workloads/bundle/quantize.py:
every Linear, Conv1d and attention projection). Prints the size ratio int8/fp32 (goal <= 0.35),
the single-row latency ratio (1 thread, median, as the bundle measures it) and the accuracy
change on held-out rows; also the size ratio of the previous quantization (torch.ao's default
dynamic quantization of the Linears outside the transformer encoder) for comparison.

    .venv/bin/python bench/bundle.py [--quick] [--arch mlp|cnn1d|transformer ...]
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings

import numpy as np
import torch
from torch import nn

from neuraxis.workloads.bundle.compress import choose, single_row_latency_ms
from neuraxis.workloads.bundle.quantize import quantize_int8
from neuraxis.workloads.evaluate.heldout import load_torchscript
from neuraxis.workloads.train.data import TabularData, assign_splits
from neuraxis.workloads.train.export import torchscript_bytes
from neuraxis.workloads.train.loop import TrainSettings, train_model
from neuraxis.workloads.train.models import model_config, serving_module

FEATURES = 8
# At least 1 M parameters each with 8 features and 2 classes.
ARCHITECTURES = {
    "mlp": {"hiddenSize": 1024, "layers": 2},
    "cnn1d": {"hiddenSize": 256, "layers": 4, "kernelSize": 7},
    "transformer": {"hiddenSize": 192, "layers": 4, "heads": 4},
}


def synthetic(rows: int, seed: int = 0) -> TabularData:
    """A nonlinear rule a small model cannot read off one feature: y = x0 + x1*x2 - x3 > 0."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, FEATURES, generator=gen)
    y = (x[:, 0] + x[:, 1] * x[:, 2] - x[:, 3] > 0).long()
    split = torch.from_numpy(assign_splits(np.arange(rows, dtype=np.int64), 0.1, 0.2, seed))
    return TabularData([f"f{i}" for i in range(FEATURES)], "y", "classification", x, y, split)


def previous_quantization(module: nn.Module) -> nn.Module:
    """What the bundle did before: torch.ao's dynamic quantization of the Linears outside the
    transformer encoder (Conv1d and the attention projections stayed fp32)."""
    from torch.ao.quantization import quantize_dynamic

    targets = {
        name
        for name, child in module.named_modules()
        if isinstance(child, nn.Linear) and ".encoder." not in f".{name}."
    }
    quantized: nn.Module = quantize_dynamic(  # type: ignore[no-untyped-call]
        copy.deepcopy(module), targets, dtype=torch.qint8
    )
    return quantized


def accuracy(module: torch.jit.ScriptModule, data: TabularData) -> float:
    with torch.no_grad():
        predicted = module(data.test_x).argmax(dim=1)
    return float((predicted == data.test_y).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rows and epochs")
    parser.add_argument("--arch", choices=list(ARCHITECTURES), action="append", help="only these")
    args = parser.parse_args()
    warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
    rows, epochs = (3_000, 3) if args.quick else (10_000, 4)
    data = synthetic(rows)
    split = data.split_rows()
    print(
        f"data: {rows} rows x {FEATURES} features (train {split['train']}, held-out test "
        f"{split['test']}), {epochs} epochs, batch 32; latency on 1 row, 1 thread, median"
    )
    settings = TrainSettings(epochs=epochs, batch_size=32, learning_rate=1e-3, seed=0)
    for arch, hyperparameters in ARCHITECTURES.items():
        if args.arch and arch not in args.arch:
            continue
        cfg = model_config(arch, hyperparameters, FEATURES, 2)
        start = time.perf_counter()
        trained = train_model(data.without_test(), cfg, settings).model.eval()
        seconds = time.perf_counter() - start
        params = sum(p.numel() for p in trained.parameters())
        served = serving_module(trained, "classification")
        fp32_ts = torchscript_bytes(served, FEATURES)
        int8 = quantize_int8(served)
        int8_ts = torchscript_bytes(int8.module, FEATURES)
        before_ts = torchscript_bytes(previous_quantization(served), FEATURES)
        fp32_module, int8_module = load_torchscript(fp32_ts), load_torchscript(int8_ts)
        latency = single_row_latency_ms({"fp32": fp32_module, "int8": int8_module}, FEATURES)
        fp32_acc, int8_acc = accuracy(fp32_module, data), accuracy(int8_module, data)
        choice = choose("accuracy", fp32_acc, int8_acc, len(fp32_ts), len(int8_ts))
        print(
            f"{arch:12s} {params / 1e6:.2f} M params ({len(int8.int8_layers)} int8 Linears, "
            f"{len(int8.fp32_layers)} fp32 weight layers left; trained in {seconds:.0f} s)\n"
            f"  fp32 (baseline)  {len(fp32_ts) / 1e6:7.3f} MB | {latency['fp32']:.3f} ms/row | "
            f"accuracy {fp32_acc:.4f}\n"
            f"  int8             {len(int8_ts) / 1e6:7.3f} MB | {latency['int8']:.3f} ms/row | "
            f"accuracy {int8_acc:.4f}\n"
            f"  ratio int8/fp32: size {len(int8_ts) / len(fp32_ts):.3f} (goal <= 0.35) | "
            f"latency {latency['int8'] / latency['fp32']:.3f} | accuracy change "
            f"{int8_acc - fp32_acc:+.4f} | previous quantization size ratio "
            f"{len(before_ts) / len(fp32_ts):.3f}\n"
            f"  bundle ships {'int8' if choice.ship == 'int8' else 'fp32'}: {choice.reason}"
        )


if __name__ == "__main__":
    main()
