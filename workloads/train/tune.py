"""AutoML with Ray Tune: `spec.tuning` becomes a search space, a search algorithm (random or TPE
via Optuna) and a scheduler (FIFO or ASHA). Every trial runs the same `train_model` as a plain
run, in one process with one CPU. Ray runs locally (2 CPUs, no dashboard, logs in a temp folder)
unless RAY_ADDRESS names an existing cluster (KubeRay)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from typing import Any

from neuraxis.crds.trainingjob import SearchDimension, Tuning
from neuraxis.workloads.train.data import TabularData
from neuraxis.workloads.train.loop import TrainSettings
from neuraxis.workloads.train.models import HyperparameterError, parse_hyperparameters

log = logging.getLogger(__name__)

# Space keys that are not architecture hyperparameters.
SETTINGS_KEYS = {"learningRate": "learning_rate", "batchSize": "batch_size"}
LOCAL_RAY_CPUS = 2


class TuningError(ValueError):
    """The search cannot run as specified; the message names the spec field."""


@dataclass(frozen=True)
class TrialBase:
    """What every trial shares: the architecture, the spec's hyperparameters and settings."""

    architecture: str
    hyperparameters: dict[str, Any]
    settings: TrainSettings
    n_outputs: int


@dataclass
class TrialRecord:
    id: str
    config: dict[str, Any]
    metrics: dict[str, float]
    status: str


@dataclass
class SearchOutcome:
    trials: list[TrialRecord] = field(default_factory=list)
    best: TrialRecord | None = None


def reported_metrics(task: str) -> list[str]:
    return ["train_loss", "val_loss", "val_accuracy" if task == "classification" else "val_mae"]


def check_tuning(tuning: Tuning, architecture: str, task: str) -> None:
    """Reject a space or metric the trials could not honour, before Ray starts."""
    metrics = reported_metrics(task)
    if tuning.metric not in metrics:
        raise TuningError(f"spec.tuning.metric: {tuning.metric!r} is not reported (use {metrics})")
    for key, dim in tuning.space.items():
        where = f"spec.tuning.space.{key}"
        candidates = _candidates(dim)
        if key == "learningRate":
            if any(not isinstance(v, int | float) or v <= 0 for v in candidates):
                raise TuningError(f"{where}: learning rates must be positive numbers")
        elif key == "batchSize":
            if any(not isinstance(v, int | float) or v < 1 for v in candidates):
                raise TuningError(f"{where}: batch sizes must be at least 1")
        else:
            for value in candidates:
                try:
                    parse_hyperparameters(architecture, {key: value})
                except HyperparameterError as exc:
                    raise TuningError(f"{where}: {exc}") from exc


def choice_value(value: int | str) -> int | float | str:
    """The API allows integers and strings as choices (no floats in a CRD's int-or-string list),
    so a learning rate is written "0.01": numeric strings become numbers."""
    if isinstance(value, int):
        return value
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            continue
    return value


def _candidates(dim: SearchDimension) -> list[Any]:
    if dim.type == "choice":
        return [choice_value(v) for v in dim.values or []]
    return [dim.min, dim.max] if dim.type != "randint" else [int(dim.min or 0), int(dim.max or 0)]


def search_space(tuning: Tuning) -> dict[str, Any]:
    """The Ray Tune space for `spec.tuning.space` (randint bounds are inclusive)."""
    from ray import tune

    space: dict[str, Any] = {}
    for key, dim in tuning.space.items():
        if dim.type == "choice":
            space[key] = tune.choice([choice_value(v) for v in dim.values or []])
        elif dim.type == "uniform":
            space[key] = tune.uniform(float(dim.min or 0), float(dim.max or 0))
        elif dim.type == "loguniform":
            space[key] = tune.loguniform(float(dim.min or 0), float(dim.max or 0))
        else:
            space[key] = tune.randint(int(dim.min or 0), int(dim.max or 0) + 1)
    return space


def apply_trial_config(
    base: TrialBase, config: dict[str, Any]
) -> tuple[dict[str, Any], TrainSettings]:
    """Split a trial's config into architecture hyperparameters and loop settings."""
    hyperparameters = dict(base.hyperparameters)
    settings = base.settings
    for key, value in config.items():
        if key == "learningRate":
            settings = replace(settings, learning_rate=float(value))
        elif key == "batchSize":
            settings = replace(settings, batch_size=int(value))
        else:
            hyperparameters[key] = value
    return hyperparameters, settings


def run_trial(config: dict[str, Any], data: TabularData, base: TrialBase) -> None:
    """One trial (runs in a Ray worker): the regular loop, reporting every epoch to Tune."""
    import torch
    from ray import tune

    from neuraxis.workloads.train.loop import train_model
    from neuraxis.workloads.train.models import model_config

    torch.set_num_threads(1)  # a trial owns one CPU; more threads would oversubscribe the node
    hyperparameters, settings = apply_trial_config(base, config)
    cfg = model_config(base.architecture, hyperparameters, len(data.features), base.n_outputs)
    train_model(data, cfg, settings, on_epoch=lambda m: tune.report(m))


def _searcher(tuning: Tuning, seed: int) -> Any:
    if tuning.algorithm == "tpe":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        return OptunaSearch(sampler=optuna.samplers.TPESampler(seed=seed))
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=seed)


def _scheduler(tuning: Tuning, epochs: int) -> Any:
    if tuning.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        return ASHAScheduler(
            time_attr="training_iteration", max_t=epochs, grace_period=1, reduction_factor=2
        )
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()  # type: ignore[no-untyped-call]


def _start_ray(temp_dir: str) -> bool:
    """Connect to RAY_ADDRESS or start a small local Ray; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(
            num_cpus=LOCAL_RAY_CPUS,
            include_dashboard=False,
            log_to_driver=False,
            _temp_dir=temp_dir,
        )
    return True


def run_search(
    data: TabularData, base: TrialBase, tuning: Tuning, *, name: str, seed: int
) -> SearchOutcome:
    """Run the search; every trial and the best are returned (errored trials included)."""
    import ray
    from ray import tune

    check_tuning(tuning, base.architecture, data.task)
    # Short path: Ray's Unix sockets live under the temp folder (path length limit).
    temp_dir = tempfile.mkdtemp(prefix="nx-ray-", dir="/tmp")
    started = _start_ray(temp_dir)
    try:
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, data=data, base=base), {"cpu": 1}
        )
        mode = "min" if tuning.goal == "minimize" else "max"
        tuner = tune.Tuner(
            trainable,
            param_space=search_space(tuning),
            tune_config=tune.TuneConfig(
                metric=tuning.metric,
                mode=mode,
                num_samples=tuning.max_trials,
                max_concurrent_trials=tuning.parallel_trials,
                search_alg=_searcher(tuning, seed),
                scheduler=_scheduler(tuning, base.settings.epochs),
                # A new actor per trial is a new process importing torch: on 2 cores that was
                # most of a small search (demo: 58 s -> 34 s for 4 trials, measured).
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=name, storage_path=os.path.join(temp_dir, "results"), verbose=0
            ),
        )
        grid = tuner.fit()
        outcome = SearchOutcome()
        for index in range(len(grid)):
            result = grid[index]
            metrics = {
                k: float(v)
                for k, v in (result.metrics or {}).items()
                if k in ("epoch", *reported_metrics(data.task)) and isinstance(v, int | float)
            }
            outcome.trials.append(
                TrialRecord(
                    id=str((result.metrics or {}).get("trial_id", result.path.rsplit("/", 1)[-1])),
                    config=dict(result.config or {}),
                    metrics=metrics,
                    status="ERROR" if result.error else "TERMINATED",
                )
            )
        done = [t for t in outcome.trials if tuning.metric in t.metrics]
        if not done:
            raise RuntimeError(f"tuning: no trial reported {tuning.metric}; see the trial errors")
        pick = min if tuning.goal == "minimize" else max
        outcome.best = pick(done, key=lambda t: t.metrics[tuning.metric])
        return outcome
    finally:
        if started:
            ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
