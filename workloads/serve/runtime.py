"""The model being served and its batcher, swappable while serving (the edge agent installs a
newer bundle without a restart; requests already queued finish on the model they started with)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from neuraxis.workloads.drift import DEFAULT_WINDOW, DriftWindow
from neuraxis.workloads.serve.batcher import Batcher
from neuraxis.workloads.serve.limits import AdaptiveBatchSize, AdaptiveConfig
from neuraxis.workloads.serve.metrics import ServeMetrics
from neuraxis.workloads.serve.model_loader import LoadedModel

log = logging.getLogger(__name__)

# Called in the worker thread after each forward with (model, rows, outputs): the edge agent's
# inference log. It runs before the results are returned, so a logged prediction is durable
# before its client sees it.
PredictionHook = Callable[[LoadedModel, list[list[float]], list[Any]], None]
# Called on the event loop after each forward with (rows, seconds): the edge latency histogram.
ForwardHook = Callable[[int, float], None]


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_size: int = 32
    max_batch_wait_ms: float = 2.0
    # Set: the batch size adapts (AIMD) between min_batch_size and max_batch_size so that one
    # forward takes about this long. None: always up to max_batch_size.
    latency_target_ms: float | None = None
    min_batch_size: int = 1

    def adaptive(self) -> AdaptiveConfig | None:
        if self.latency_target_ms is None:
            return None
        return AdaptiveConfig(
            self.latency_target_ms / 1000.0, self.min_batch_size, self.max_batch_size
        )


@dataclass(frozen=True)
class ModelRuntime:
    model: LoadedModel
    batcher: Batcher[Any]
    drift: DriftWindow | None = None  # None when the artifact has no training profile


def _batch_runner(
    model: LoadedModel, hook: PredictionHook | None
) -> Callable[[list[list[float]]], list[Any]]:
    regression = model.signature.task == "regression"

    def run_batch(rows: list[list[float]]) -> list[Any]:
        out = model.forward(rows)
        values: list[Any] = (out.reshape(-1) if regression else out).tolist()
        if hook is not None:
            hook(model, rows, values)
        return values

    return run_batch


class ModelSlot:
    """Holds the current ModelRuntime; `install` swaps in a new model."""

    def __init__(
        self,
        batching: BatchingConfig,
        metrics: ServeMetrics,
        on_predictions: PredictionHook | None = None,
        drift_window: int = DEFAULT_WINDOW,
        on_forward: ForwardHook | None = None,
    ):
        self.batching = batching
        self.metrics = metrics
        self.on_predictions = on_predictions
        self.on_forward = on_forward
        adaptive = batching.adaptive()
        # One controller for the slot: a swapped-in model starts from the size learnt so far.
        self.adaptive = AdaptiveBatchSize(adaptive) if adaptive else None
        self.drift_window = drift_window
        self.current: ModelRuntime | None = None

    async def install(self, model: LoadedModel) -> None:
        """Start serving `model`; the previous one drains its queue, then stops."""
        adaptive, hook = self.adaptive, self.on_forward

        def forwarded(rows: int, seconds: float) -> None:
            if adaptive is not None:
                batcher.max_batch_size = adaptive.observe(rows, seconds)
            if hook is not None:
                hook(rows, seconds)

        batcher: Batcher[Any] = Batcher(
            _batch_runner(model, self.on_predictions),
            max_batch_size=adaptive.size if adaptive else self.batching.max_batch_size,
            max_wait_s=self.batching.max_batch_wait_ms / 1000.0,
            on_batch=self.metrics.batch_size.observe,
            on_forward=forwarded,
        )
        batcher.start()
        drift = DriftWindow(model.profile, self.drift_window) if model.profile else None
        previous, self.current = self.current, ModelRuntime(model, batcher, drift)
        self.metrics.set_model(model.name, model.version, model.digest)
        self.metrics.clear_drift()
        log.info("serving %s version %s (%s)", model.name, model.version, model.digest)
        if previous is not None:
            await previous.batcher.stop()

    def observe_served(self, runtime: ModelRuntime, rows: list[list[float]]) -> None:
        """Add predicted rows to the runtime's drift window; export PSI once it is full. Runs
        on the event loop (the window is not shared with worker threads)."""
        if runtime.drift is None:
            return
        runtime.drift.observe(rows)
        values = runtime.drift.psi()
        if values is not None and runtime is self.current:  # a swapped-out model stays silent
            self.metrics.set_drift(runtime.model.name, values)

    async def close(self) -> None:
        if self.current is not None:
            await self.current.batcher.stop()
