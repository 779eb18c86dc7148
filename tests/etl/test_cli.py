"""`neuraxis workload etl` as the Job runs it: spec file in, result published to the lake and the
termination-message file, exit code 0 or 1."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import typer
import yaml
from typer.testing import CliRunner

from neuraxis.lake import Lake
from neuraxis.workloads.etl.cli import etl_command

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

pytestmark = pytest.mark.engine

SPEC: dict[str, Any] = {
    "apiVersion": "neuraxis.dev/v1alpha1",
    "kind": "Dataset",
    "metadata": {"name": "small-readings"},
    "spec": {
        "source": {"builtin": {"name": "sensors", "rows": 300, "seed": 5}},
        "quality": {
            "onFailure": "Quarantine",
            "expectations": [{"rule": "notNull", "column": "machine_id"}],
        },
        "privacy": {
            "saltSecretRef": {"name": "cli-salt", "key": "value"},
            "columns": [{"column": "operator_email", "method": "hash", "tags": ["email"]}],
        },
    },
}


def _invoke(tmp_path: Path, spec: Path, run_id: str, env: dict[str, str]) -> tuple[int, Path]:
    app = typer.Typer()
    app.command()(etl_command)
    log = tmp_path / f"termination-{run_id}"
    lake = tmp_path / "lake"
    args = ["--spec", str(spec), "--namespace", "cli", "--run-id", run_id, "--lake", str(lake)]
    result = CliRunner().invoke(app, args, env={"NEURAXIS_TERMINATION_LOG": str(log), **env})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, log


def test_cli_runs_and_publishes(spark: SparkSession, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    code, log = _invoke(tmp_path, spec, "run-ok", {"NEURAXIS_SECRET_CLI_SALT_VALUE": "s"})
    assert code == 0
    compact = json.loads(log.read_text())
    assert compact["outcome"] == "Succeeded"
    assert compact["reason"] == "RowsQuarantined"
    assert compact["version"] == 0
    assert compact["rows"] + compact["quarantinedRows"] == 300
    assert compact["qualityPassed"] is True
    assert compact["digest"].startswith("sha256:")
    lake = Lake(str(tmp_path / "lake"))
    assert compact["resultUri"] == lake.uri("runs/cli/run-ok/result.json")
    full = lake.read_json("runs/cli/run-ok/result.json")
    assert full["table"]["uri"] == lake.uri("tables/cli/small-readings")
    assert full["schema"][7] == {"name": "operator_email", "type": "string", "pii": ["email"]}


def test_cli_failed_result_is_published_and_exits_1(spark: SparkSession, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    code, log = _invoke(tmp_path, spec, "run-nosalt", {"NEURAXIS_SECRET_CLI_SALT_VALUE": ""})
    assert code == 1
    compact = json.loads(log.read_text())
    assert (compact["outcome"], compact["reason"]) == ("Failed", "MissingSalt")
    assert "NEURAXIS_SECRET_CLI_SALT_VALUE" in compact["message"]
    lake = Lake(str(tmp_path / "lake"))
    assert lake.read_json("runs/cli/run-nosalt/result.json")["reason"] == "MissingSalt"


def test_cli_invalid_spec_is_a_failed_result(tmp_path: Path) -> None:
    bad = dict(SPEC, spec={"source": {"builtin": {"name": "sensors", "rows": 0}}})
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump(bad))
    code, log = _invoke(tmp_path, spec, "run-bad", {})
    assert code == 1
    compact = json.loads(log.read_text())
    assert compact["reason"] == "InvalidSpec"
    assert "spec.source.builtin.rows" in compact["message"]
