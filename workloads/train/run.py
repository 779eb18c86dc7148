"""The train workload: a TrainingJob spec in, an artifact and a result out.

spec -> data (Delta, streamed) -> [search (Ray Tune)] -> train (DDP, checkpoints) ->
artifact (write_artifact) -> result (publish_result) + Prometheus textfile
"""

from __future__ import annotations

import logging
import os
import subprocess
from dataclasses import asdict
from pathlib import Path
from typing import Any

from neuraxis.crds.trainingjob import TrainingJob
from neuraxis.lake import Lake
from neuraxis.workloads.artifact import write_artifact
from neuraxis.workloads.result import now_rfc3339, publish_result
from neuraxis.workloads.train.custom import artifact_folder, custom_trainer_env
from neuraxis.workloads.train.data import DataError, TabularData, read_table
from neuraxis.workloads.train.launch import (
    ProcessPlacement,
    backend_for,
    device_for,
    placement_from_env,
)
from neuraxis.workloads.train.loop import DistContext, TrainSettings, train_model
from neuraxis.workloads.train.metrics_export import TrainingMetrics
from neuraxis.workloads.train.models import HyperparameterError, model_config
from neuraxis.workloads.train.provenance import code_version
from neuraxis.workloads.train.tune import SearchOutcome, TrialBase, TuningError, run_search

log = logging.getLogger(__name__)

SPEC_ERRORS = (HyperparameterError, TuningError, DataError)


def load_training_job(path: str | Path) -> TrainingJob:
    from neuraxis.resources import load_resources

    resources = load_resources([path])
    jobs = [r for r in resources if isinstance(r, TrainingJob)]
    if len(jobs) != 1:
        raise ValueError(f"{path}: expected exactly one TrainingJob, found {len(jobs)}")
    return jobs[0]


def train_settings(job: TrainingJob, device: str) -> TrainSettings:
    model = job.spec.model
    if model is None:
        raise ValueError("spec.model: required for the built-in trainer")
    every, interval = job.spec.checkpoint.cadence()
    return TrainSettings(
        epochs=model.epochs,
        batch_size=model.batch_size,
        learning_rate=model.learning_rate,
        seed=model.seed,
        checkpoint_every=every,
        checkpoint_interval_s=interval,
        device=device,
    )


def model_version_name(job: TrainingJob) -> str:
    register = job.spec.register_
    if register is None:
        return job.metadata.name
    return register.version_name or f"{register.model}-{job.metadata.name}"


def load_data(job: TrainingJob, lake: Lake, namespace: str) -> TabularData:
    model = job.spec.model
    return read_table(
        lake,
        job.spec.central_dataset().namespace or namespace,
        job.spec.central_dataset().name,
        label=job.spec.task.label,
        task=job.spec.task.type,
        features=job.spec.task.features,
        version=job.spec.central_dataset().version,
        validation_split=job.spec.validation_split,
        test_split=job.spec.test_split,
        seed=model.seed if model else 0,
    )


def _trial_dict(trial: Any, metric: str) -> dict[str, Any]:
    return {
        "id": trial.id,
        "metric": trial.metrics.get(metric),
        "hyperparameters": trial.config,
        "metrics": trial.metrics,
        "status": trial.status,
    }


def run_training(
    job: TrainingJob,
    lake: Lake,
    namespace: str,
    run_id: str,
    *,
    device: str | None = None,
    placement: ProcessPlacement | None = None,
) -> dict[str, Any] | None:
    """Run the job in this process (one DDP rank when `placement` says so). Rank 0 writes the
    artifact and publishes the result, which it also returns; other ranks return None."""
    import torch

    started = now_rfc3339()
    placement = placement or placement_from_env()
    ctx = DistContext(rank=placement.rank, world_size=placement.world_size) if placement else None
    dev = device_for(placement, device)
    if not dev.startswith("cuda"):
        # Same data, seed and code give the same model on CPU (`neuraxis reproduce` checks it):
        # an op without a deterministic CPU kernel fails instead of drifting silently.
        torch.use_deterministic_algorithms(True)
    model_spec = job.spec.model
    if model_spec is None:
        raise ValueError("spec.model: required for the built-in trainer (spec.custom runs apart)")
    tuning = job.spec.tuning
    if tuning is not None and ctx is not None and not ctx.is_main:
        return None  # a search runs on rank 0 only; its trials are Ray's processes
    if ctx is not None and ctx.world_size > 1:
        import torch.distributed as dist

        if dev.startswith("cuda"):
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend_for(dev))
        # One line per rank that proves the rendezvous happened (pod logs, `neuraxis run`).
        log.info(
            "joined the process group: rank=%d world_size=%d device=%s",
            ctx.rank, ctx.world_size, dev,
        )  # fmt: skip
    try:
        full = load_data(job, lake, namespace)
        split_rows = full.split_rows()
        # The test rows are gone before tuning and training start (evaluation recomputes them).
        data = full.without_test()
        n_outputs = len(data.classes) if data.task == "classification" else 1
        settings = train_settings(job, dev)
        hyperparameters = dict(model_spec.hyperparameters)
        metrics_out = TrainingMetrics(namespace, run_id)
        search: SearchOutcome | None = None
        if tuning is not None:
            base = TrialBase(model_spec.architecture, hyperparameters, settings, n_outputs)
            search = run_search(data, base, tuning, name=run_id, seed=model_spec.seed)
            metrics_out.update(trials_completed=len(search.trials))
            if search.best is not None:
                from neuraxis.workloads.train.tune import apply_trial_config

                hyperparameters, settings = apply_trial_config(base, search.best.config)
        cfg = model_config(model_spec.architecture, hyperparameters, len(data.features), n_outputs)
        from neuraxis.workloads.train.checkpoint import CheckpointStore

        store = CheckpointStore(lake, namespace, run_id, keep=job.spec.checkpoint.keep)
        is_main = ctx is None or ctx.is_main

        def report(metrics: dict[str, float]) -> None:
            if is_main:
                epoch = int(metrics["epoch"])
                metrics_out.update(
                    epoch=epoch,
                    epochs=settings.epochs,
                    progress=epoch / settings.epochs,
                    metrics={k: v for k, v in metrics.items() if k != "epoch"},
                )
                log.info("epoch %d/%d %s", epoch, settings.epochs, metrics)

        outcome = train_model(data, cfg, settings, ctx=ctx, store=store, on_epoch=report)
        if not is_main:
            return None
        final = {k: v for k, v in outcome.history[-1].items() if k != "epoch"}
        version = model_version_name(job)
        training_meta: dict[str, Any] = {
            "job": job.metadata.name,
            "namespace": namespace,
            "runId": run_id,
            "dataset": asdict(data.lineage) if data.lineage else None,
            "validationSplit": job.spec.validation_split,
            "testSplit": job.spec.test_split,
            # The split's seed: the spec's model seed (a search may change the weight seed).
            "splitSeed": model_spec.seed,
            "splitRows": split_rows,
            "seed": settings.seed,
            "hyperparameters": {
                **hyperparameters,
                "learningRate": settings.learning_rate,
                "batchSize": settings.batch_size,
                "epochs": settings.epochs,
            },
            "workers": ctx.world_size if ctx else 1,
            "device": dev,
            "history": outcome.history,
            "bestTrial": _trial_dict(search.best, tuning.metric)
            if search and search.best and tuning
            else None,
            "codeVersion": code_version(),
        }
        from neuraxis.workloads.drift import build_profile
        from neuraxis.workloads.train.export import artifact_files, build_signature

        signature = build_signature(
            features=data.features,
            task=data.task,
            classes=data.classes,
            label=data.label,
            architecture=cfg.architecture,
            model_version=version,
        )
        ref = write_artifact(
            lake,
            artifact_folder(job, namespace, run_id),
            artifact_files(
                outcome.model,
                cfg,
                signature,
                training_meta,
                # The drift reference: the rows the model was fitted on (not validation or test).
                profile=build_profile(data.features, data.train_x.numpy()),
            ),
        )
        best = training_meta["bestTrial"]
        result: dict[str, Any] = {
            "outcome": "Succeeded",
            "reason": "Trained",
            "kind": "TrainingJob",
            "name": job.metadata.name,
            "namespace": namespace,
            "runId": run_id,
            "startTime": started,
            "completionTime": now_rfc3339(),
            "metrics": final,
            "history": outcome.history,
            "resumedFromEpoch": outcome.resumed_from,
            "progress": {
                "epoch": settings.epochs,
                "epochs": settings.epochs,
                "trialsCompleted": len(search.trials) if search else 0,
                "trialsTotal": tuning.max_trials if tuning else 0,
                "percent": 100,
            },
            "artifact": {"uri": ref.uri, "digest": ref.digest, "sizeBytes": ref.size_bytes},
            "modelVersion": version if job.spec.register_ else None,
            "bestTrial": best,
            "trials": [_trial_dict(t, tuning.metric) for t in search.trials]
            if search and tuning
            else [],
            "lineage": {
                "dataset": training_meta["dataset"],
                "codeVersion": training_meta["codeVersion"],
            },
            "hyperparameters": training_meta["hyperparameters"],
        }
        compact = {
            "outcome": "Succeeded",
            "reason": "Trained",
            "metrics": final,
            "artifact": {"uri": ref.uri, "digest": ref.digest},
            "datasetDigest": data.lineage.digest if data.lineage else None,
            "bestTrial": {k: best[k] for k in ("id", "metric", "hyperparameters")}
            if best
            else None,
        }
        publish_result(lake, namespace, run_id, result, compact)
        return result
    finally:
        if ctx is not None and ctx.world_size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def failure_result(
    reason: str, message: str, started: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    result = {
        "outcome": "Failed",
        "reason": reason,
        "message": message,
        "startTime": started,
        "completionTime": now_rfc3339(),
    }
    return result, {"outcome": "Failed", "reason": reason, "message": message}


def failure_reason(exc: BaseException) -> str:
    return "InvalidSpec" if isinstance(exc, SPEC_ERRORS) else "TrainingFailed"


def run_custom(job: TrainingJob, lake: Lake, namespace: str, run_id: str) -> dict[str, Any]:
    """Run `spec.custom.command` locally, one process per worker, with the environment contract.
    (In a cluster the operator runs the image instead.)"""
    custom = job.spec.custom
    if custom is None:
        raise ValueError("spec.custom: required")
    started = now_rfc3339()
    workers = job.spec.resources.workers
    procs = [
        subprocess.Popen(
            custom.command,
            env={
                **os.environ,
                **custom_trainer_env(
                    job,
                    lake,
                    namespace,
                    run_id,
                    rank=r,
                    world_size=workers,
                    master_addr="127.0.0.1",
                    local_rank=r,
                ),
            },
        )
        for r in range(workers)
    ]
    codes = [p.wait() for p in procs]
    if any(codes):
        result, compact = failure_result(
            "CustomTrainerFailed", f"exit codes by rank: {codes}", started
        )
    else:
        result = {
            "outcome": "Succeeded",
            "reason": "Trained",
            "startTime": started,
            "completionTime": now_rfc3339(),
            "outputUri": lake.uri(artifact_folder(job, namespace, run_id)),
        }
        compact = {"outcome": "Succeeded", "reason": "Trained"}
    publish_result(lake, namespace, run_id, result, compact)
    return result
