"""Bad input and faults end as a failed result with a CamelCase reason and a message that names
the field or column, a FAIL lineage event, and no table version."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from neuraxis.lake import Lake
from neuraxis.lineage import read_events
from neuraxis.workloads.etl import errors
from neuraxis.workloads.etl.run import run_etl
from tests.etl.conftest import dataset_from

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

pytestmark = pytest.mark.engine
NS = "bad"
SENSORS = {"builtin": {"name": "sensors", "rows": 200, "seed": 1}}


def _fail(
    spark: SparkSession, lake: Lake, spec: dict[str, Any], env: dict[str, str] | None = None
) -> tuple[str, str]:
    result = run_etl(
        dataset_from(spec), lake, run_id="run", namespace=NS, spark=spark, env=env or {}
    )
    assert result.outcome == "Failed", result
    assert result.version is None
    assert not lake.exists(f"tables/{NS}/ds/_delta_log")
    fail = read_events(lake, "run")[-1]
    assert fail["eventType"] == "FAIL"
    assert fail["run"]["facets"]["errorMessage"]["message"].startswith(result.reason)
    return result.reason, result.message


def test_missing_source(spark: SparkSession, lake: Lake, tmp_path: Path) -> None:
    spec = {"source": {"uri": f"file://{tmp_path}/nope.csv", "format": "csv"}}
    reason, message = _fail(spark, lake, spec)
    assert reason == errors.SOURCE_NOT_FOUND
    assert "spec.source.uri" in message and "nope.csv" in message


def test_unreadable_source(spark: SparkSession, lake: Lake, tmp_path: Path) -> None:
    (tmp_path / "data.parquet").write_text("this is not parquet")
    spec = {"source": {"uri": f"file://{tmp_path}/data.parquet", "format": "parquet"}}
    reason, message = _fail(spark, lake, spec)
    assert reason == errors.SOURCE_UNREADABLE
    assert "data.parquet" in message


def test_malformed_json_records(spark: SparkSession, lake: Lake, tmp_path: Path) -> None:
    (tmp_path / "rows.json").write_text('{"a": 1}\n{"a": 2, broken\n')
    spec = {
        "source": {"uri": f"file://{tmp_path}/rows.json", "format": "json"},
        "transform": {"casts": {"a": "int"}},
    }
    reason, _ = _fail(spark, lake, spec)
    assert reason == errors.SOURCE_UNREADABLE


def test_unknown_upstream_dataset(spark: SparkSession, lake: Lake) -> None:
    spec = {"source": {"from": {"datasetRef": {"name": "ghost"}}}}
    reason, message = _fail(spark, lake, spec)
    assert reason == errors.UPSTREAM_NOT_FOUND
    assert "spec.source.from.datasetRef: Dataset 'ghost'" in message


@pytest.mark.parametrize(
    ("transform", "field", "column"),
    [
        ({"casts": {"nope": "int"}}, "spec.transform.casts", "nope"),
        ({"renames": {"nope": "x"}}, "spec.transform.renames", "nope"),
        ({"dedupe": {"keys": ["nope"]}}, "spec.transform.dedupe.keys", "nope"),
    ],
)
def test_transform_on_a_missing_column(
    spark: SparkSession, lake: Lake, transform: dict[str, Any], field: str, column: str
) -> None:
    reason, message = _fail(spark, lake, {"source": SENSORS, "transform": transform})
    assert reason == errors.SCHEMA_MISMATCH
    assert message.startswith(f"{field}: column {column!r} does not exist")
    assert "machine_id" in message  # the columns that do exist


def test_quality_rule_on_a_missing_column(spark: SparkSession, lake: Lake) -> None:
    spec = {
        "source": SENSORS,
        "quality": {
            "expectations": [
                {"rule": "notNull", "column": "machine_id"},
                {"rule": "notNull", "column": "humidity"},
            ]
        },
    }
    reason, message = _fail(spark, lake, spec)
    assert reason == errors.SCHEMA_MISMATCH
    assert message.startswith("spec.quality.expectations[1].column: column 'humidity'")


def test_derived_source_missing_columns(spark: SparkSession, lake: Lake) -> None:
    upstream = run_etl(
        dataset_from(
            {"source": SENSORS, "transform": {"sql": "SELECT machine_id FROM source"}},
            name="narrow",
        ),
        lake,
        run_id="up",
        namespace=NS,
        spark=spark,
        env={},
    )
    assert upstream.succeeded, upstream.message
    spec = {
        "source": {"from": {"datasetRef": {"name": "narrow"}}},
        "transform": {"sql": "SELECT machine_id, temperature FROM source"},
    }
    reason, message = _fail(spark, lake, spec)
    assert reason == errors.SCHEMA_MISMATCH
    assert "temperature" in message and "columns of `source`: machine_id" in message
    pinned = {"source": {"from": {"datasetRef": {"name": "narrow", "version": 5}}}}
    reason, message = _fail(spark, lake, pinned)
    assert reason == errors.UPSTREAM_NOT_FOUND
    assert "version 5 does not exist" in message


@pytest.mark.parametrize("sql", ["SELEC machine_id FROM source", "SELECT nosuchfn(1) FROM source"])
def test_invalid_sql(spark: SparkSession, lake: Lake, sql: str) -> None:
    reason, message = _fail(spark, lake, {"source": SENSORS, "transform": {"sql": sql}})
    assert reason == errors.INVALID_SQL
    assert message.startswith("spec.transform.sql: ")


def test_invalid_regex(spark: SparkSession, lake: Lake) -> None:
    spec = {
        "source": SENSORS,
        "quality": {"expectations": [{"rule": "regex", "column": "status", "pattern": "(open"}]},
    }
    reason, message = _fail(spark, lake, spec)
    assert reason == errors.INVALID_EXPECTATION
    assert message.startswith("spec.quality.expectations[0].pattern")


def test_missing_salt(spark: SparkSession, lake: Lake) -> None:
    spec = {
        "source": SENSORS,
        "privacy": {
            "saltSecretRef": {"name": "lake-salt", "key": "salt"},
            "columns": [{"column": "operator_email", "method": "hash"}],
        },
    }
    reason, message = _fail(spark, lake, spec, env={})
    assert reason == errors.MISSING_SALT
    assert "NEURAXIS_SECRET_LAKE_SALT_SALT" in message


def test_every_row_quarantined(spark: SparkSession, lake: Lake) -> None:
    spec = {
        "source": SENSORS,
        "quality": {
            "onFailure": "Quarantine",
            "expectations": [{"rule": "allowedValues", "column": "status", "values": ["none"]}],
        },
    }
    reason, message = _fail(spark, lake, spec)
    assert reason == errors.ALL_ROWS_QUARANTINED
    assert "every one of the 200 rows" in message


def test_fail_mode_writes_nothing(spark: SparkSession, lake: Lake) -> None:
    spec = {
        "source": SENSORS,
        "quality": {
            "expectations": [
                {"rule": "notNull", "column": "machine_id"},
                {"rule": "rowCount", "min": 10},
            ]
        },
    }
    result = run_etl(dataset_from(spec), lake, run_id="run", namespace=NS, spark=spark, env={})
    assert (result.outcome, result.reason) == ("Failed", errors.QUALITY_GATE_FAILED)
    assert result.quality_passed is False
    assert [q.passed for q in result.quality] == [False, True]
    assert result.quality[0].failed_rows == 1
    assert "notNull(machine_id)" in result.message
    assert not lake.exists(f"tables/{NS}/ds")
