"""`neuraxis workload train`: run a TrainingJob here (one process, a local DDP group, or one
rank of a torchrun group in a pod) and publish its result."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from neuraxis.lake import Lake

app = typer.Typer(help="Training workload.", no_args_is_help=True, pretty_exceptions_enable=False)

log = logging.getLogger("neuraxis.workloads.train")


def _configure_logging() -> None:
    # Entry point, not library: the workload's own process decides how logs look.
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@app.callback()
def _group() -> None:
    """Keep the command name on the command line (typer folds a lone command otherwise)."""


@app.command("train")
def train_command(
    spec: str = typer.Option(..., help="TrainingJob YAML."),
    namespace: str = typer.Option("default", help="Namespace of the job (lake layout)."),
    run_id: str = typer.Option(..., help="Run id: checkpoints and result under runs/<ns>/<id>."),
    lake: str | None = typer.Option(None, help="Lake root URI (default $NEURAXIS_LAKE_URI)."),
    device: str | None = typer.Option(None, help="cpu or cuda (default: cuda when present)."),
) -> None:
    """Train the job's model (or run its custom trainer) and publish the result."""
    _configure_logging()
    from neuraxis.lake import Lake
    from neuraxis.resources import ResourceError
    from neuraxis.workloads.result import now_rfc3339, publish_result
    from neuraxis.workloads.train.launch import launch_local, needs_local_launch, placement_from_env
    from neuraxis.workloads.train.run import (
        failure_reason,
        failure_result,
        load_training_job,
        run_custom,
        run_training,
    )

    the_lake = Lake(lake) if lake else Lake.from_env()
    started = now_rfc3339()
    try:
        job = load_training_job(spec)
    except (ResourceError, ValueError, FileNotFoundError) as exc:
        result, compact = failure_result("InvalidSpec", str(exc), started)
        publish_result(the_lake, namespace, run_id, result, compact)
        typer.echo(f"invalid: {exc}", err=True)
        raise typer.Exit(1) from exc
    if job.spec.custom is not None:
        custom_result = run_custom(job, the_lake, namespace, run_id)
        raise typer.Exit(0 if custom_result["outcome"] == "Succeeded" else 1)
    placement = placement_from_env()
    workers = job.spec.resources.workers
    if needs_local_launch(workers, job.spec.tuning is not None, placement):
        args = ["train", "--spec", spec, "--namespace", namespace, "--run-id", run_id]
        args += ["--lake", the_lake.root, *(["--device", device] if device else [])]
        code = launch_local(workers, args)
        if code != 0:
            _publish_launch_failure(the_lake, namespace, run_id, started, code)
        raise typer.Exit(code)
    try:
        outcome = run_training(job, the_lake, namespace, run_id, device=device, placement=placement)
    except Exception as exc:
        log.exception("training failed")
        if placement is None or placement.rank == 0:
            failed, compact = failure_result(
                failure_reason(exc), f"{type(exc).__name__}: {exc}", started
            )
            publish_result(the_lake, namespace, run_id, failed, compact)
        raise typer.Exit(1) from exc
    if outcome is not None:
        artifact = outcome["artifact"]
        typer.echo(f"{outcome['outcome']}: artifact {artifact['uri']} {artifact['digest']}")


def _publish_launch_failure(
    lake: Lake, namespace: str, run_id: str, started: str, code: int
) -> None:
    """Keep rank 0's own failure result when it wrote one during this launch."""
    from neuraxis.lake import LakeError
    from neuraxis.workloads.result import publish_result
    from neuraxis.workloads.train.run import failure_result

    try:
        previous = lake.read_json(f"{Lake.run_path(namespace, run_id)}/result.json")
    except LakeError:
        previous = None
    if (
        previous
        and previous.get("outcome") == "Failed"
        and previous.get("startTime", "") >= started
    ):
        return
    result, compact = failure_result("WorkerFailed", f"torchrun exited with {code}", started)
    publish_result(lake, namespace, run_id, result, compact)


def main() -> None:
    app()
