"""Model-card plots as PNG bytes (Matplotlib, Agg backend: no display in a pod)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import numpy.typing as npt


def _figure() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    # A Figure not registered with pyplot: no global state, freed when it goes out of scope.
    return Figure(figsize=(5, 4), dpi=100)


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def training_curves(history: list[dict[str, float]]) -> bytes:
    fig = _figure()
    ax = fig.add_subplot()
    epochs = [h["epoch"] for h in history]
    for key in ("train_loss", "val_loss"):
        if any(key in h for h in history):
            ax.plot(epochs, [h.get(key, np.nan) for h in history], marker="o", label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title("Training curves")
    ax.legend()
    return _png(fig)


def roc_curve_plot(
    y: npt.NDArray[np.int64], probs: npt.NDArray[np.float32], classes: list[str]
) -> bytes:
    from sklearn.metrics import roc_curve

    fig = _figure()
    ax = fig.add_subplot()
    targets = [1] if len(classes) == 2 else list(range(len(classes)))
    for k in targets:
        if 0 < (y == k).sum() < len(y):
            fpr, tpr, _ = roc_curve(y == k, probs[:, k])
            ax.plot(fpr, tpr, label=f"class {classes[k]}")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC")
    ax.legend()
    return _png(fig)


def confusion_matrix_plot(matrix: list[list[int]], classes: list[str]) -> bytes:
    fig = _figure()
    ax = fig.add_subplot()
    data = np.array(matrix)
    ax.imshow(data, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            ax.text(j, i, str(data[i, j]), ha="center", va="center")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix")
    return _png(fig)


def predicted_vs_actual(y: npt.NDArray[np.float32], pred: npt.NDArray[np.float32]) -> bytes:
    fig = _figure()
    ax = fig.add_subplot()
    ax.scatter(y, pred, s=8)
    low, high = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
    ax.plot([low, high], [low, high], linestyle="--", color="grey")
    ax.set_xlabel("actual")
    ax.set_ylabel("predicted")
    ax.set_title("Predicted vs actual")
    return _png(fig)


def feature_attributions(attributions: dict[str, Any]) -> bytes:
    """Horizontal bars of mean |attribution| per feature (most important on top), with the
    signed mean as a marker."""
    features = list(reversed(attributions["features"]))
    fig = _figure()
    ax = fig.add_subplot()
    ys = np.arange(len(features))
    ax.barh(ys, [f["meanAbs"] for f in features], color="tab:blue", label="mean |attribution|")
    ax.scatter([f["mean"] for f in features], ys, color="tab:orange", zorder=3, label="mean")
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_yticks(ys, [f["name"] for f in features])
    ax.set_xlabel(f"attribution to the {attributions['explainedOutput']}")
    ax.set_title(f"Integrated Gradients ({attributions['rows']} rows)")
    ax.legend()
    return _png(fig)
