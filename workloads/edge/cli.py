"""`neuraxis workload edge`: the command the EdgeDeployment DaemonSet runs on each edge node."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import typer

from neuraxis.crds.edgedeployment import Load, Sync
from neuraxis.crds.modelversion import Serving
from neuraxis.lake import EDGE_SITE_ENV, Lake
from neuraxis.workloads.drift import DEFAULT_WINDOW
from neuraxis.workloads.edge.lake_table import LakeFields, site_of
from neuraxis.workloads.serve.auth_cli import (
    ALLOWED_USER,
    API_KEYS_DIR,
    AUTH_MODE,
    RATE_LIMIT_BURST,
    RATE_LIMIT_RPS,
    TOKEN_AUDIENCE,
    gate_from_options,
)

_DEFAULT_SYNC_S = float(Sync.model_fields["interval_seconds"].default)
_SYNC = {name: f.default for name, f in Sync.model_fields.items()}
_LOAD = {name: f.default for name, f in Load.model_fields.items()}


def edge_command(
    bundle: str = typer.Option(..., help="Edge bundle URI: file:// or s3://.../edge/ns/m/v."),
    cache_dir: Path = typer.Option(..., help="Local folder for the bundle cache and log buffer."),
    port: int = typer.Option(8080, help="Port to listen on."),
    grpc_port: int = typer.Option(
        0, min=0, help="Open Inference Protocol gRPC port (0: off; the DaemonSet uses 8091)."
    ),
    host: str = typer.Option("127.0.0.1", help="Address to bind."),
    lake: str | None = typer.Option(None, help="Lake root for logs; default from --bundle."),
    deployment: str | None = typer.Option(None, help="EdgeDeployment name (log path)."),
    node: str | None = typer.Option(None, help="Node name (log path); default $NODE_NAME."),
    name: str | None = typer.Option(None, help="Model name in URLs; default from the URI."),
    check_interval_s: float = typer.Option(
        60.0, min=0.05, help="Compare the bundle at the URI with the pinned one (never swapped)."
    ),
    sync_interval_s: float = typer.Option(_DEFAULT_SYNC_S, min=0.05, help="Upload logs."),
    max_batch_size: int = typer.Option(Serving.model_fields["max_batch_size"].default, min=1),
    max_batch_wait_ms: float = typer.Option(
        Serving.model_fields["max_batch_wait_ms"].default, min=0
    ),
    max_body_bytes: int = typer.Option(1 << 20, min=1, help="Larger request bodies get 413."),
    digest: str | None = typer.Option(
        None, help="The pinned bundle digest (sha256:...): any other bundle is refused."
    ),
    drift_window: int = typer.Option(
        DEFAULT_WINDOW, min=1, help="Served rows in the PSI window of neuraxis_feature_drift."
    ),
    auth_mode: str = AUTH_MODE,
    api_keys_dir: Path | None = API_KEYS_DIR,
    token_audience: list[str] | None = TOKEN_AUDIENCE,
    allowed_user: list[str] | None = ALLOWED_USER,
    rate_limit_rps: float | None = RATE_LIMIT_RPS,
    rate_limit_burst: int | None = RATE_LIMIT_BURST,
    max_in_flight: int = typer.Option(
        _LOAD["max_in_flight"], min=1, help="Predictions at once; more get 429 (Retry-After)."
    ),
    retry_after_s: int = typer.Option(_LOAD["retry_after_seconds"], min=1, help="429 Retry-After."),
    min_batch_size: int = typer.Option(_LOAD["min_batch_size"], min=1, help="Adaptive floor."),
    latency_target_ms: float | None = typer.Option(
        None, min=0.001, help="Adapt the batch size (AIMD) to this forward latency."
    ),
    health_interval_s: float = typer.Option(
        float(_SYNC["health_interval_seconds"]), min=0.05, help="Take a health snapshot."
    ),
    max_buffered_snapshots: int = typer.Option(
        _SYNC["max_buffered_snapshots"], min=1, help="Health snapshots kept while offline."
    ),
    site: str | None = typer.Option(
        None, help="Edge site in the log records; default $NEURAXIS_EDGE_SITE, else unknown."
    ),
    node_sites: Path | None = typer.Option(
        None, help="JSON node name -> site (the operator mounts it); used when no site is given."
    ),
    hard_example_threshold: float | None = typer.Option(
        None,
        min=0,
        max=1,
        help="Flag classifications whose top probability is below this (spec.logging).",
    ),
) -> None:
    """Serve an edge bundle locally, offline-capable, with durable inference-log upload."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    from neuraxis.workloads.edge.agent import AgentConfig, AgentStartError, EdgeAgent
    from neuraxis.workloads.edge.health import HealthConfig, HealthReporter, health_prefix
    from neuraxis.workloads.serve.app import ServeConfig, build_app
    from neuraxis.workloads.serve.grpc_server import GrpcConfig
    from neuraxis.workloads.serve.metrics import ServeMetrics
    from neuraxis.workloads.serve.model_loader import lake_root_of, model_name_of, namespace_of
    from neuraxis.workloads.serve.runtime import BatchingConfig, ModelSlot
    from neuraxis.workloads.serve.server import run_server

    lake_root = lake or lake_root_of(bundle)
    if lake_root is None:
        typer.echo(f"error: cannot tell the lake root from {bundle}; pass --lake", err=True)
        raise typer.Exit(2)
    if min_batch_size > max_batch_size:
        typer.echo("error: --min-batch-size must not be greater than --max-batch-size", err=True)
        raise typer.Exit(2)
    model_name = name or model_name_of(bundle)
    node_name = node or os.environ.get("NODE_NAME") or socket.gethostname()
    namespace = namespace_of(bundle) or "default"
    prefix = f"{Lake.inference_logs_path(namespace, deployment or model_name)}/{node_name}"
    site_name = site_of(node_name, site, os.environ.get(EDGE_SITE_ENV), node_sites)
    config = AgentConfig(
        bundle_uri=bundle,
        cache_dir=cache_dir,
        lake_root=lake_root,
        log_prefix=prefix,
        node=node_name,
        model_name=model_name,
        check_interval_s=check_interval_s,
        sync_interval_s=sync_interval_s,
        expected_digest=digest,
        lake_fields=LakeFields(site_name, node_name, hard_example_threshold),
    )
    metrics = ServeMetrics()
    agent = EdgeAgent(config, metrics)
    try:
        model = agent.initial_model()
    except AgentStartError as exc:
        from neuraxis.workloads.result import report_refusal

        typer.echo(f"error: {exc.reason}: {exc}", err=True)
        report_refusal(exc.reason, str(exc))
        raise typer.Exit(2) from exc
    batching = BatchingConfig(max_batch_size, max_batch_wait_ms, latency_target_ms, min_batch_size)
    gate = gate_from_options(
        auth_mode, api_keys_dir, token_audience, allowed_user, rate_limit_rps, rate_limit_burst
    )
    serve_config = ServeConfig(
        batching, max_body_bytes, drift_window, gate, max_in_flight=max_in_flight,
        retry_after_s=retry_after_s,
    )  # fmt: skip
    health = HealthReporter(
        agent,
        metrics,
        HealthConfig(
            cache_dir / "health",
            health_prefix(prefix),
            health_interval_s,
            sync_interval_s,
            max_buffered_snapshots,
        ),
    )
    agent.slot = ModelSlot(
        batching,
        metrics,
        on_predictions=agent.record,
        drift_window=drift_window,
        on_forward=health.health.observe_forward,
    )
    hooks = [agent.lifespan, health.lifespan]
    grpc = GrpcConfig(grpc_port, host, max_body_bytes) if grpc_port else None
    app = build_app(model, serve_config, metrics, agent.slot, hooks=hooks, grpc=grpc)
    run_server(app, host, port)


def main() -> None:
    typer.run(edge_command)
