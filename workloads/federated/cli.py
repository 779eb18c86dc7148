"""`neuraxis workload federated superlink|supernode|server`: the processes of a federated run,
started by the operator's pods and, on loopback, by `neuraxis run` (workloads/federated/roles.py
says what each does; the environment they read is workloads/federation_contract.py)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import typer

from neuraxis.workloads.federation_contract import SUPERLINK_PORT

federated_app = typer.Typer(
    help="Federated training: Flower's SuperLink, a site's SuperNode, the server app.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _configure_logging() -> None:
    # Entry point, not library: the workload's own process decides how logs look.
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _refuse(exc: Exception) -> typer.Exit:
    typer.echo(f"invalid: {exc}", err=True)
    return typer.Exit(2)


@federated_app.command("superlink")
def superlink_command(
    host: str = typer.Option("0.0.0.0", help="Address the SuperLink listens on."),
    port: int = typer.Option(SUPERLINK_PORT, help="Port of Fleet, Control and ServerAppIo."),
) -> None:
    """Run Flower's SuperLink with the TLS files in $NEURAXIS_FED_TLS_DIR."""
    from neuraxis.workloads.federated.roles import RoleError, exec_tool, superlink_args

    try:
        args = superlink_args(os.environ, host, port)
    except RoleError as exc:
        raise _refuse(exc) from exc
    exec_tool(args)


@federated_app.command("supernode")
def supernode_command(
    appio_port: int = typer.Option(
        9094, help="Loopback port of the SuperNode's own ClientAppIo API."
    ),
) -> None:
    """Run Flower's SuperNode for $NEURAXIS_FED_SITE against $NEURAXIS_FED_SUPERLINK, trusting
    the CA in $NEURAXIS_FED_TLS_DIR, reading only $NEURAXIS_DATASET (version pinned)."""
    from neuraxis.workloads.federated.roles import RoleError, exec_tool, supernode_args

    try:
        args = supernode_args(os.environ, appio_port)
    except RoleError as exc:
        raise _refuse(exc) from exc
    exec_tool(args)


@federated_app.command("server")
def server_command(
    spec: str = typer.Option(..., help="TrainingJob YAML (sites pinned to their versions)."),
    namespace: str = typer.Option("default", help="Namespace of the job (lake layout)."),
    run_id: str = typer.Option(..., help="Run id: the result goes to runs/<ns>/<id>."),
    lake: str | None = typer.Option(None, help="Lake root URI (default $NEURAXIS_LAKE_URI)."),
    flwr_home: str | None = typer.Option(
        None, help="Flower's config folder (default $FLWR_HOME, else ~/.flwr)."
    ),
    record_dir: str = typer.Option("", hidden=True, help="Tests: record what the server gets."),
) -> None:
    """Submit the run through $NEURAXIS_FED_CONTROL, wait for its result and report it in the
    termination message; exits 1 when the run failed."""
    _configure_logging()
    from neuraxis.lake import Lake
    from neuraxis.resources import ResourceError
    from neuraxis.workloads.federated.roles import run_server
    from neuraxis.workloads.result import now_rfc3339, publish_failure
    from neuraxis.workloads.train.run import load_training_job

    the_lake = Lake(lake) if lake else Lake.from_env()
    try:
        job = load_training_job(spec)
        if job.spec.federation is None:
            raise ValueError("spec.federation: required for a federated run")
    except (ResourceError, ValueError, FileNotFoundError) as exc:
        publish_failure(the_lake, namespace, run_id, "InvalidSpec", str(exc), now_rfc3339())
        raise _refuse(exc) from exc
    home = Path(flwr_home or os.environ.get("FLWR_HOME") or Path.home() / ".flwr")
    result = run_server(job, the_lake, namespace, run_id, os.environ, home, record_dir)
    typer.echo(f"{result['outcome']}: {result.get('reason', '')}")
    raise typer.Exit(0 if result["outcome"] == "Succeeded" else 1)
