"""`neuraxis workload bundle`: build the edge bundle of a registered model version."""

from __future__ import annotations

import logging
import sys

import typer

app = typer.Typer(
    help="Edge bundle workload.", no_args_is_help=True, pretty_exceptions_enable=False
)
log = logging.getLogger("neuraxis.workloads.bundle")


@app.callback()
def _group() -> None:
    """Keep the command name on the command line (typer folds a lone command otherwise)."""


@app.command("bundle")
def bundle_command(
    model: str = typer.Option(..., help="Model name in the registry."),
    version: str = typer.Option(..., help="ModelVersion name."),
    namespace: str = typer.Option("default", help="Namespace (lake layout)."),
    run_id: str = typer.Option(..., help="Run id: result under runs/<ns>/<id>."),
    quantize: str = typer.Option("int8", help="int8 or none."),
    lake: str | None = typer.Option(None, help="Lake root URI (default $NEURAXIS_LAKE_URI)."),
) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    from neuraxis.lake import Lake
    from neuraxis.workloads.bundle.run import build_edge_bundle
    from neuraxis.workloads.result import now_rfc3339, publish_failure

    the_lake = Lake(lake) if lake else Lake.from_env()
    started = now_rfc3339()
    if quantize not in ("int8", "none"):
        typer.echo(f"--quantize: {quantize!r} is not int8 or none", err=True)
        raise typer.Exit(2)
    try:
        result = build_edge_bundle(
            the_lake,
            namespace,
            model,
            version,
            run_id,
            quantize="int8" if quantize == "int8" else "none",
        )
    except Exception as exc:
        log.exception("bundle failed")
        message = f"{type(exc).__name__}: {exc}"
        publish_failure(the_lake, namespace, run_id, "BundleFailed", message, started)
        raise typer.Exit(1) from exc
    edge = result["edge"]
    typer.echo(
        f"bundle {result['bundle']['uri']} {result['bundle']['digest']}: {edge['metric']} "
        f"fp32 {edge['fp32']:.4f} -> {edge['quantize']} {edge['quantized']:.4f}"
    )


def main() -> None:
    app()
