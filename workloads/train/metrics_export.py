"""Progress and metrics as Prometheus gauges, written with the node-exporter textfile pattern:
`$NEURAXIS_METRICS_DIR/train.prom`, replaced atomically after every epoch. A sidecar (or the node
exporter's textfile collector on a shared volume) serves the file; locally it is simply a file to
read. Nothing is written when NEURAXIS_METRICS_DIR is unset."""

from __future__ import annotations

import os
from pathlib import Path

METRICS_DIR_ENV = "NEURAXIS_METRICS_DIR"


class TrainingMetrics:
    """One registry per run (no global state), flushed to the textfile on every update."""

    def __init__(
        self, namespace: str, run_id: str, directory: str | None = None, name: str = "train"
    ):
        from prometheus_client import CollectorRegistry, Gauge

        folder = directory or os.environ.get(METRICS_DIR_ENV)
        self.path = Path(folder) / f"{name}.prom" if folder else None
        self.registry = CollectorRegistry()
        labels = ["namespace", "run_id"]
        self._labels = {"namespace": namespace, "run_id": run_id}
        self.epoch = Gauge(
            "neuraxis_train_epoch", "Epochs completed.", labels, registry=self.registry
        )
        self.epochs = Gauge(
            "neuraxis_train_epochs", "Epochs planned.", labels, registry=self.registry
        )
        self.progress = Gauge(
            "neuraxis_train_progress_ratio",
            "Share of the run done (0-1).",
            labels,
            registry=self.registry,
        )
        self.trials = Gauge(
            "neuraxis_train_trials_completed",
            "Tuning trials finished.",
            labels,
            registry=self.registry,
        )
        self.metric = Gauge(
            "neuraxis_train_metric",
            "Latest value of a training metric.",
            [*labels, "metric"],
            registry=self.registry,
        )

    def update(
        self,
        *,
        epoch: int | None = None,
        epochs: int | None = None,
        progress: float | None = None,
        trials_completed: int | None = None,
        metrics: dict[str, float] | None = None,
    ) -> None:
        if epoch is not None:
            self.epoch.labels(**self._labels).set(epoch)
        if epochs is not None:
            self.epochs.labels(**self._labels).set(epochs)
        if progress is not None:
            self.progress.labels(**self._labels).set(progress)
        if trials_completed is not None:
            self.trials.labels(**self._labels).set(trials_completed)
        for name, value in (metrics or {}).items():
            self.metric.labels(**self._labels, metric=name).set(value)
        self.flush()

    def flush(self) -> None:
        if self.path is None:
            return
        from prometheus_client import write_to_textfile

        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_to_textfile(str(self.path), self.registry)  # writes a temp file, then renames
