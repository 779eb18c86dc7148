"""Whether int8 pays for a model: size, single-row latency and held-out accuracy of the int8
TorchScript against the fp32 one, and the decision which of the two the edge bundle ships.

Policy (documented in the README):
- int8 ships only when its TorchScript is at most MAX_SIZE_RATIO of the fp32 TorchScript: a tiny
  model's int8 file carries packed-weight and per-channel scale overhead that can outweigh the
  bytes saved (the demo's 3-16-2 MLP is larger in int8), and a small saving is not worth the
  accuracy risk;
- and only when the headline metric on the held-out rows moves by no more than the tolerance:
  accuracy may drop by at most ACCURACY_TOLERANCE (absolute), rmse may grow by at most
  RMSE_TOLERANCE (relative).
Latency is measured and recorded but does not decide: a timing on a shared machine is noise-prone
and a model that fits is worth more at the edge than a fraction of a millisecond."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

MAX_SIZE_RATIO = 0.75
ACCURACY_TOLERANCE = 0.02
RMSE_TOLERANCE = 0.05
LATENCY_REPEATS = 200


@dataclass(frozen=True)
class Choice:
    ship: str  # "int8" or "none" (fp32)
    reason: str


def _pct(ratio: float) -> str:
    return f"{ratio * 100:.0f}%"


def metric_regression(metric: str, fp32: float, int8: float) -> str | None:
    """Why int8's `metric` is out of tolerance against fp32, or None when it is within."""
    if metric == "accuracy":
        drop = fp32 - int8
        if drop > ACCURACY_TOLERANCE:
            return (
                f"int8 accuracy {int8:.4f} is {drop:.4f} below fp32 {fp32:.4f}, more than the "
                f"{ACCURACY_TOLERANCE} tolerance"
            )
        return None
    growth = (int8 - fp32) / fp32 if fp32 > 0 else (0.0 if int8 <= fp32 else float("inf"))
    if growth > RMSE_TOLERANCE:
        return (
            f"int8 {metric} {int8:.4g} is {_pct(growth)} above fp32 {fp32:.4g}, more than the "
            f"{_pct(RMSE_TOLERANCE)} tolerance"
        )
    return None


def choose(
    metric: str, fp32_value: float, int8_value: float, fp32_bytes: int, int8_bytes: int
) -> Choice:
    """int8 when it is small enough against fp32 and its metric is within tolerance."""
    ratio = int8_bytes / fp32_bytes
    if ratio > MAX_SIZE_RATIO:
        verdict = "larger than fp32" if ratio > 1 else f"more than the {_pct(MAX_SIZE_RATIO)} limit"
        return Choice(
            "none",
            f"int8 TorchScript is {int8_bytes} bytes, {_pct(ratio)} of fp32 ({fp32_bytes} "
            f"bytes): {verdict}; fp32 ships",
        )
    regression = metric_regression(metric, fp32_value, int8_value)
    if regression is not None:
        return Choice("none", f"{regression}; fp32 ships")
    return Choice(
        "int8",
        f"int8 is {_pct(ratio)} of fp32 size; {metric} change {int8_value - fp32_value:+.4f} "
        "within tolerance",
    )


def single_row_latency_ms(
    modules: dict[str, torch.jit.ScriptModule], n_features: int, repeats: int = LATENCY_REPEATS
) -> dict[str, float]:
    """Median milliseconds of one forward on one row per module, on one thread (what an edge
    request costs, and steadier than a timing across threads), the modules interleaved so load
    from other processes hits them alike."""
    row = torch.zeros(1, n_features)
    threads = torch.get_num_threads()
    samples: dict[str, list[float]] = {name: [] for name in modules}
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            for module in modules.values():  # warm-up: allocator, packed weights, profiling
                for _ in range(10):
                    module(row)
            for _ in range(repeats):
                for name, module in modules.items():
                    start = time.perf_counter()
                    module(row)
                    samples[name].append((time.perf_counter() - start) * 1e3)
    finally:
        torch.set_num_threads(threads)
    return {name: statistics.median(values) for name, values in samples.items()}


def latency_record(fp32_ms: float, int8_ms: float) -> dict[str, Any]:
    return {
        "fp32Ms": round(fp32_ms, 4),
        "int8Ms": round(int8_ms, 4),
        "ratio": round(int8_ms / fp32_ms, 3),
        "rows": 1,
        "threads": 1,
        "statistic": f"median of {LATENCY_REPEATS}",
    }
