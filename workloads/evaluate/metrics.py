"""Evaluation metrics, as pure functions of labels and model outputs. Names match `Gate.metric`:
accuracy, precision, recall, f1, roc_auc, mae, rmse, r2, latency_p50_ms, latency_p99_ms."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

CALIBRATION_BINS = 10


def classification_metrics(
    y: npt.NDArray[np.int64], probs: npt.NDArray[np.float32], classes: list[str]
) -> dict[str, Any]:
    """Accuracy; precision, recall and F1 (of the second class when binary, macro otherwise);
    ROC-AUC (omitted when the data hold one class); the confusion matrix (rows: true class,
    columns: predicted, in `classes` order); calibration (ECE and reliability bins)."""
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    labels = list(range(len(classes)))
    pred = probs.argmax(axis=1)
    binary = len(classes) == 2
    precision, recall, f1, _ = precision_recall_fscore_support(
        y,
        pred,
        labels=labels,
        average="binary" if binary else "macro",
        pos_label=1,
        zero_division=0,
    )
    scalars: dict[str, float] = {
        "accuracy": float(accuracy_score(y, pred)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
    }
    if len(np.unique(y)) == len(classes):
        auc = (
            roc_auc_score(y, probs[:, 1])
            if binary
            else roc_auc_score(y, probs, multi_class="ovr", labels=labels)
        )
        scalars["roc_auc"] = float(auc)
    calibration = calibration_bins(y, probs)
    scalars["ece"] = calibration["ece"]
    return {
        "scalars": scalars,
        "confusionMatrix": confusion_matrix(y, pred, labels=labels).tolist(),
        "calibration": calibration,
    }


def calibration_bins(
    y: npt.NDArray[np.int64], probs: npt.NDArray[np.float32], bins: int = CALIBRATION_BINS
) -> dict[str, Any]:
    """Expected calibration error over equal-width confidence bins, and the bins themselves."""
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    out, ece = [], 0.0
    for b in range(bins):
        inside = which == b
        count = int(inside.sum())
        if count:
            conf, acc = float(confidence[inside].mean()), float(correct[inside].mean())
            ece += count / len(y) * abs(acc - conf)
        else:
            conf = acc = float("nan")
        out.append(
            {
                "lower": float(edges[b]),
                "upper": float(edges[b + 1]),
                "count": count,
                "confidence": None if count == 0 else conf,
                "accuracy": None if count == 0 else acc,
            }
        )
    return {"ece": float(ece), "bins": out}


def regression_metrics(y: npt.NDArray[np.float32], pred: npt.NDArray[np.float32]) -> dict[str, Any]:
    err = pred.astype(np.float64) - y.astype(np.float64)
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((err**2).sum()) / total if total > 0 else 0.0
    return {
        "scalars": {
            "mae": float(np.abs(err).mean()),
            "rmse": float(np.sqrt((err**2).mean())),
            "r2": r2,
        }
    }


def single_row_latency(
    forward: Callable[[Any], Any], rows: list[Any], warmup: int = 10
) -> dict[str, float]:
    """p50 and p99 of one-row forward passes, in milliseconds."""
    for row in rows[:warmup]:
        forward(row)
    times = []
    for row in rows:
        start = time.perf_counter()
        forward(row)
        times.append((time.perf_counter() - start) * 1000.0)
    return {
        "latency_p50_ms": float(np.percentile(times, 50)),
        "latency_p99_ms": float(np.percentile(times, 99)),
    }
