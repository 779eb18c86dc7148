"""Integrated Gradients (Captum) on the served TorchScript model: per-row attributions for the
`:explain` route and global attributions for the model card.

What is explained: for classification the probability of one class (the predicted class, the
`target`), for regression the prediction. Attributions are in that output's units and, by IG's
completeness, sum to output(x) - output(baseline); the convergence delta is what they miss.
The baseline is the training mean of each feature (from the artifact's profile.json) or, for an
artifact without a profile, all zeros; it is reported with every explanation.
Cost is bounded: N_STEPS Gauss-Legendre steps, so a call runs N_STEPS forwards per row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch

from neuraxis.workloads.drift import TrainingProfile

N_STEPS = 128  # max |delta| 0.01 of a probability on a ReLU MLP (64 steps: 0.03)
METHOD = "gausslegendre"
GLOBAL_MAX_ROWS = 256  # rows of the held-out data sampled for the card's global attributions
GLOBAL_SEED = 0

Task = Literal["classification", "regression"]


@dataclass(frozen=True)
class Baseline:
    kind: Literal["training-mean", "zeros"]
    values: list[float]

    def describe(self) -> str:
        if self.kind == "training-mean":
            return "the training mean of each feature (profile.json)"
        return "all features 0 (the artifact has no training profile)"


def baseline_for(profile: TrainingProfile | None, n_features: int) -> Baseline:
    if profile is not None and len(profile.features) == n_features:
        return Baseline("training-mean", profile.means)
    return Baseline("zeros", [0.0] * n_features)


@dataclass(frozen=True)
class Explanation:
    """Per-row results, all arrays with one entry (or row) per explained row."""

    attributions: npt.NDArray[np.float64]  # [rows, features]
    targets: list[int] | None  # class index explained (classification)
    outputs: npt.NDArray[np.float64]  # the explained output at x
    baseline_outputs: npt.NDArray[np.float64]  # the same output at the baseline
    deltas: npt.NDArray[np.float64]  # sum(attributions) - (output - baseline_output)


def explained_output(module: Callable[[torch.Tensor], torch.Tensor], task: Task) -> Any:
    """A forward giving [rows, classes] probabilities or [rows] predictions (Captum's shape)."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        out = module(x)
        return out.reshape(-1) if task == "regression" else out

    return forward


def gradient_error(module: Callable[[torch.Tensor], torch.Tensor], n_features: int) -> str | None:
    """Why IG cannot run on `module` (no gradient to its input, e.g. int8 dynamic-quantized
    Linear layers), or None when it can."""
    x = torch.zeros(1, n_features, requires_grad=True)
    try:
        with torch.enable_grad():
            out = module(x)
            (grad,) = torch.autograd.grad(out.sum(), x)
    except RuntimeError as exc:
        return f"the model gives no gradient with respect to its input ({str(exc)[:120]})"
    if not torch.isfinite(grad).all():
        return "the model's gradient with respect to its input is not finite"
    return None


def integrated_gradients(
    module: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    baseline: Baseline,
    task: Task,
    n_steps: int = N_STEPS,
) -> Explanation:
    """IG attributions of `x` [rows, features] against `baseline`."""
    from captum.attr import IntegratedGradients

    forward = explained_output(module, task)
    x = x.to(torch.float32)
    base = torch.tensor(baseline.values, dtype=torch.float32).expand_as(x).contiguous()
    with torch.no_grad():
        out, base_out = forward(x), forward(base)
    targets: list[int] | None = None
    target_arg: torch.Tensor | None = None
    if task == "classification":
        target_arg = out.argmax(dim=1)
        targets = [int(t) for t in target_arg]
        rows = torch.arange(len(x))
        out, base_out = out[rows, target_arg], base_out[rows, target_arg]
    with torch.enable_grad():  # the server's threads may run under inference_mode elsewhere
        attributions, delta = IntegratedGradients(forward).attribute(
            x,
            baselines=base,
            target=target_arg,
            n_steps=n_steps,
            method=METHOD,
            return_convergence_delta=True,
        )
    return Explanation(
        attributions=attributions.detach().double().numpy(),
        targets=targets,
        outputs=out.double().numpy(),
        baseline_outputs=base_out.double().numpy(),
        deltas=delta.detach().double().numpy(),
    )


def sample_rows(x: torch.Tensor, max_rows: int = GLOBAL_MAX_ROWS, seed: int = GLOBAL_SEED) -> Any:
    """At most `max_rows` rows of `x`, chosen with a fixed seed (the card is reproducible)."""
    if len(x) <= max_rows:
        return x
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return x[order[:max_rows].sort().values]


def global_attributions(
    module: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    baseline: Baseline,
    task: Task,
    feature_names: list[str],
) -> dict[str, Any]:
    """The card's section: mean |attribution| and mean signed attribution per feature over a
    seeded sample of `x`, most important first, with the convergence delta."""
    rows = sample_rows(x)
    explanation = integrated_gradients(module, rows, baseline, task)
    attributions = explanation.attributions
    features: list[dict[str, Any]] = [
        {
            "name": name,
            "meanAbs": float(np.abs(attributions[:, j]).mean()),
            "mean": float(attributions[:, j].mean()),
        }
        for j, name in enumerate(feature_names)
    ]
    features.sort(key=lambda f: -f["meanAbs"])
    deltas = np.abs(explanation.deltas)
    return {
        "method": "IntegratedGradients (Captum)",
        "nSteps": N_STEPS,
        "integration": METHOD,
        "explainedOutput": "probability of the predicted class"
        if task == "classification"
        else "the prediction",
        "baseline": {
            "kind": baseline.kind,
            "description": baseline.describe(),
            "values": dict(zip(feature_names, baseline.values, strict=True)),
        },
        "rows": len(rows),
        "sampledFrom": len(x),
        "seed": GLOBAL_SEED,
        "features": features,
        "convergenceDelta": {"meanAbs": float(deltas.mean()), "maxAbs": float(deltas.max())},
    }
