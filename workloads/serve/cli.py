"""`neuraxis workload serve`: the command the ModelVersion serving Deployment runs."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from neuraxis.crds.modelversion import Serving
from neuraxis.workloads.drift import DEFAULT_WINDOW
from neuraxis.workloads.serve.auth_cli import (
    ALLOWED_USER,
    API_KEYS_DIR,
    AUTH_MODE,
    RATE_LIMIT_BURST,
    RATE_LIMIT_RPS,
    TOKEN_AUDIENCE,
    gate_from_options,
)

_DEFAULT_BATCH = Serving.model_fields["max_batch_size"].default
_DEFAULT_WAIT_MS = Serving.model_fields["max_batch_wait_ms"].default


def serve_command(
    model: str = typer.Option(
        ..., help="Artifact folder: a path, file://... or s3://.../models/ns/m/v."
    ),
    port: int = typer.Option(8080, help="Port to listen on."),
    grpc_port: int = typer.Option(
        0, min=0, help="Open Inference Protocol gRPC port (0: off; pods use 8081)."
    ),
    host: str = typer.Option("127.0.0.1", help="Address to bind (0.0.0.0 in a pod)."),
    max_batch_size: int = typer.Option(_DEFAULT_BATCH, min=1, help="Rows per forward at most."),
    max_batch_wait_ms: float = typer.Option(_DEFAULT_WAIT_MS, min=0, help="Batch gathering wait."),
    name: str | None = typer.Option(None, help="Model name in URLs; default from the URI."),
    digest: str | None = typer.Option(None, help="Expected artifact digest (sha256:...)."),
    max_body_bytes: int = typer.Option(1 << 20, min=1, help="Larger request bodies get 413."),
    torch_threads: int = typer.Option(0, min=0, help="torch intra-op threads (0: torch default)."),
    graceful_timeout_s: int = typer.Option(30, min=1, help="SIGTERM: wait this long for requests."),
    drift_window: int = typer.Option(
        DEFAULT_WINDOW, min=1, help="Served rows in the PSI window of neuraxis_feature_drift."
    ),
    auth_mode: str = AUTH_MODE,
    api_keys_dir: Path | None = API_KEYS_DIR,
    token_audience: list[str] | None = TOKEN_AUDIENCE,
    allowed_user: list[str] | None = ALLOWED_USER,
    rate_limit_rps: float | None = RATE_LIMIT_RPS,
    rate_limit_burst: int | None = RATE_LIMIT_BURST,
) -> None:
    """Serve a model artifact over HTTP (KServe v1 and Open Inference Protocol v2) and, with
    --grpc-port, over gRPC (Open Inference Protocol v2)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    from neuraxis.workloads.serve.app import ServeConfig, build_app
    from neuraxis.workloads.serve.grpc_server import GrpcConfig
    from neuraxis.workloads.serve.model_loader import ModelLoadError, load_model
    from neuraxis.workloads.serve.runtime import BatchingConfig
    from neuraxis.workloads.serve.server import run_server

    if torch_threads:
        import torch

        torch.set_num_threads(torch_threads)
    try:
        loaded = load_model(model, name=name, expected_digest=digest)
    except ModelLoadError as exc:
        from neuraxis.workloads.result import report_refusal

        typer.echo(f"error: {exc.reason}: {exc}", err=True)
        report_refusal(exc.reason, str(exc))
        raise typer.Exit(2) from exc
    batching = BatchingConfig(max_batch_size, max_batch_wait_ms)
    gate = gate_from_options(
        auth_mode, api_keys_dir, token_audience, allowed_user, rate_limit_rps, rate_limit_burst
    )
    config = ServeConfig(batching, max_body_bytes, drift_window, gate)
    grpc = GrpcConfig(grpc_port, host, max_body_bytes, graceful_timeout_s) if grpc_port else None
    run_server(build_app(loaded, config, grpc=grpc), host, port, graceful_timeout_s)


def main() -> None:
    typer.run(serve_command)
