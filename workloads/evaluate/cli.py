"""`neuraxis workload evaluate`: score a ModelVersion, apply its gates, write its model card."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from neuraxis.lake import Lake

app = typer.Typer(help="Evaluation workload.", no_args_is_help=True, pretty_exceptions_enable=False)
log = logging.getLogger("neuraxis.workloads.evaluate")


@app.callback()
def _group() -> None:
    """Keep the command name on the command line (typer folds a lone command otherwise)."""


@app.command("evaluate")
def evaluate_command(
    spec: str = typer.Option(..., help="ModelVersion YAML."),
    namespace: str = typer.Option("default", help="Namespace (lake layout)."),
    run_id: str = typer.Option(..., help="Run id: result under runs/<ns>/<id>."),
    lake: str | None = typer.Option(None, help="Lake root URI (default $NEURAXIS_LAKE_URI)."),
    artifact_uri: str | None = typer.Option(None, help="Artifact folder URI (default: registry)."),
    artifact_digest: str | None = typer.Option(
        None, help="The digest the artifact must have (pinned); otherwise it is refused."
    ),
    dataset: str | None = typer.Option(
        None, help="Evaluation Dataset (default: validation split)."
    ),
    backtest: bool = typer.Option(
        False,
        "--backtest",
        help="Backtest: score on the latest version of spec.evaluation.datasetRef; no card.",
    ),
) -> None:
    """Exit 0 when evaluation ran (gates passed or not: see the result), 1 when it could not."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    from neuraxis.lake import Lake
    from neuraxis.workloads.artifact import failure_reason
    from neuraxis.workloads.evaluate.run import load_model_version, run_evaluation
    from neuraxis.workloads.result import now_rfc3339, publish_failure

    the_lake = Lake(lake) if lake else Lake.from_env()
    started = now_rfc3339()
    if backtest:
        _backtest(spec, the_lake, namespace, run_id, (artifact_uri, artifact_digest), started)
        return
    try:
        mv = load_model_version(spec)
        result = run_evaluation(
            mv,
            the_lake,
            namespace,
            run_id,
            artifact_uri=artifact_uri,
            dataset=dataset,
            expected_digest=artifact_digest,
        )
    except Exception as exc:
        log.exception("evaluation failed")
        message = f"{type(exc).__name__}: {exc}"
        reason = failure_reason(exc, "EvaluationFailed")
        publish_failure(the_lake, namespace, run_id, reason, message, started)
        raise typer.Exit(1) from exc
    typer.echo(f"{result['reason']}: {result['message']} (card {result['cardUri']})")


def _backtest(
    spec: str,
    lake: Lake,
    namespace: str,
    run_id: str,
    artifact: tuple[str | None, str | None],
    started: str,
) -> None:
    """The backtest mode: `artifact` is (--artifact-uri, --artifact-digest)."""
    from neuraxis.workloads.evaluate.backtest import run_backtest
    from neuraxis.workloads.evaluate.run import load_model_version
    from neuraxis.workloads.result import publish_failure

    try:
        result = run_backtest(
            load_model_version(spec),
            lake,
            namespace,
            run_id,
            artifact_uri=artifact[0],
            expected_digest=artifact[1],
        )
    except Exception as exc:
        log.exception("backtest failed")
        message = f"{type(exc).__name__}: {exc}"
        publish_failure(lake, namespace, run_id, "BacktestFailed", message, started)
        raise typer.Exit(1) from exc
    data = result["dataset"]
    typer.echo(f"{result['reason']}: {result['message']} ({data['name']} v{data.get('version')})")


def main() -> None:
    app()
