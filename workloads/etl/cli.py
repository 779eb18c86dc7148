"""`neuraxis workload etl`: what a Dataset's Job runs. Loads the Dataset from the spec file the
operator mounts (a ConfigMap), runs it, and publishes the result (result.json in the lake and the
compact termination message). Exit code 0 on success, 1 on a failed result (published too)."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from neuraxis.lake import Lake

if TYPE_CHECKING:
    from neuraxis.crds.dataset import Dataset


def upstream_map(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, uri = pair.partition("=")
        if not sep or not name or not uri:
            raise typer.BadParameter(
                f"{pair!r}: expected <dataset>=<table uri>", param_hint="--upstream"
            )
        out[name] = uri
    return out


def load_dataset(spec: Path) -> Dataset:
    """The Dataset in a spec file. Raises OSError, yaml.YAMLError or ResourceError (with no
    errors listed: the file holds another kind)."""
    import yaml

    from neuraxis.crds.dataset import Dataset
    from neuraxis.resources import ResourceError, parse_resource

    resource = parse_resource(yaml.safe_load(spec.read_text()))
    if not isinstance(resource, Dataset):
        raise ResourceError(str(spec), [])
    return resource


def etl_command(
    spec: Path = typer.Option(..., "--spec", help="YAML file holding the Dataset resource."),
    namespace: str = typer.Option(..., "--namespace", help="Namespace of the Dataset."),
    run_id: str = typer.Option(..., "--run-id", help="Unique id of this run (the Job's uid)."),
    lake: str | None = typer.Option(
        None, "--lake", help="Lake root URI (default $NEURAXIS_LAKE_URI or .neuraxis/lake)."
    ),
    upstream: list[str] = typer.Option(
        [], "--upstream", help="<dataset>=<table uri> for a derived source outside the lake."
    ),
) -> None:
    """Run a Dataset's ETL pipeline and publish its result."""
    import yaml

    from neuraxis.resources import ResourceError
    from neuraxis.workloads.etl.errors import INVALID_SPEC
    from neuraxis.workloads.etl.report import EtlResult
    from neuraxis.workloads.etl.run import run_etl
    from neuraxis.workloads.result import publish_result

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    the_lake = Lake(lake) if lake else Lake.from_env()
    upstream_uris = upstream_map(upstream)
    try:
        result = run_etl(
            load_dataset(spec), the_lake, run_id=run_id, namespace=namespace, upstream=upstream_uris
        )
    except (OSError, yaml.YAMLError, ResourceError) as exc:
        stamp = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
        kind = "not a Dataset" if isinstance(exc, ResourceError) and not exc.errors else str(exc)
        result = EtlResult(
            outcome="Failed",
            reason=INVALID_SPEC,
            message=f"--spec {spec}: {kind}",
            dataset=spec.stem,
            namespace=namespace,
            run_id=run_id,
            table_name="",
            table_uri="",
            started_at=stamp,
            finished_at=stamp,
        )
    uri = publish_result(the_lake, namespace, run_id, result.to_result(), result.to_compact())
    typer.echo(f"{result.outcome} ({result.reason}): {result.message}", err=not result.succeeded)
    typer.echo(f"result: {uri}")
    if not result.succeeded:
        raise typer.Exit(1)


def etl_app() -> typer.Typer:
    """The `etl` command alone (what `python -m neuraxis.workloads.etl` and the local Spark
    server run)."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(etl_command)
    return app


def main() -> None:
    etl_app()(args=sys.argv[1:], prog_name="neuraxis workload etl")
