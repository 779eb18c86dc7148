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
    artifact_uri: str | None = typer.Option(
        None, help="The ModelVersion's artifact folder URI (its status.artifact.uri)."
    ),
    artifact_digest: str | None = typer.Option(
        None, help="The digest the artifact must have (pinned); otherwise it is refused."
    ),
    heldout_dataset: str | None = typer.Option(
        None,
        help="Judge int8 against fp32 on every row of this Dataset (the ModelVersion's "
        "spec.evaluation.datasetRef); default the training job's test split.",
    ),
    heldout_namespace: str | None = typer.Option(
        None, help="Namespace of --heldout-dataset (default --namespace)."
    ),
    heldout_version: int | None = typer.Option(
        None, min=0, help="Version of --heldout-dataset (default its newest)."
    ),
) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    from neuraxis.crds.common import DatasetRef
    from neuraxis.lake import Lake
    from neuraxis.workloads.artifact import failure_reason
    from neuraxis.workloads.bundle.run import build_edge_bundle
    from neuraxis.workloads.evaluate.heldout import folder_of
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
            source_folder=folder_of(the_lake, artifact_uri) if artifact_uri else None,
            expected_digest=artifact_digest,
            heldout=DatasetRef(
                name=heldout_dataset, namespace=heldout_namespace, version=heldout_version
            )
            if heldout_dataset
            else None,
        )
    except Exception as exc:
        log.exception("bundle failed")
        message = f"{type(exc).__name__}: {exc}"
        reason = failure_reason(exc, "BundleFailed")
        publish_failure(the_lake, namespace, run_id, reason, message, started)
        raise typer.Exit(1) from exc
    edge = result["edge"]
    shipped = "int8" if edge["quantize"] == "int8" else "fp32"
    typer.echo(
        f"bundle {result['bundle']['uri']} {result['bundle']['digest']}: {shipped} "
        f"({edge['reason']})"
    )


def main() -> None:
    app()
