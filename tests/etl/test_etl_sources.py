"""Raw-file sources (csv, json, parquet, delta), the transform steps, every masking method, Warn
mode and append mode, on small files written with pyarrow."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, write_deltalake

from neuraxis.lake import Lake
from neuraxis.workloads.etl import delta_io
from neuraxis.workloads.etl.privacy import REDACTED
from neuraxis.workloads.etl.run import run_etl
from tests.etl.conftest import dataset_from

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

pytestmark = pytest.mark.engine
NS = "raw"
SALT = {"NEURAXIS_SECRET_S_K": "pepper"}

PEOPLE = pa.table(
    {
        "Id": pa.array(["1", "2", "2", "3", "4"]),
        "Name": pa.array(["Ada Lovelace", "Alan Turing", "Alan Turing", "Grace Hopper", None]),
        "email": pa.array(["ada@x.org", "alan@x.org", "alan@x.org", "grace@x.org", "anon@x.org"]),
        "born": pa.array(
            [
                datetime(1815, 12, 10, 8, 30, tzinfo=UTC),
                datetime(1912, 6, 23, 9, tzinfo=UTC),
                datetime(1912, 6, 23, 9, tzinfo=UTC),
                datetime(1906, 12, 9, 17, tzinfo=UTC),
                datetime(2001, 1, 1, tzinfo=UTC),
            ],
            type=pa.timestamp("us", tz="UTC"),
        ),
        "score": pa.array(["9.5", "8", "8", "x", "7"]),
    }
)


def _people_spec(uri: str, fmt: str, **extra: Any) -> dict[str, Any]:
    return {
        "source": {"uri": uri, "format": fmt, **extra},
        "transform": {
            "renames": {"Id": "id", "Name": "name"},
            "casts": {"id": "int", "score": "double", "born": "timestamp"},
            "dedupe": {"keys": []},
        },
        "quality": {
            "onFailure": "Warn",
            "expectations": [
                {"rule": "notNull", "column": "score"},
                {"rule": "unique", "column": "id"},
            ],
        },
        "privacy": {
            "saltSecretRef": {"name": "s", "key": "k"},
            "columns": [
                {"column": "email", "method": "hash", "tags": ["email"]},
                {"column": "name", "method": "redact", "tags": ["person"]},
                {"column": "born", "method": "generalize", "granularity": "year"},
            ],
        },
    }


def _run(spark: SparkSession, lake: Lake, spec: dict[str, Any], run_id: str = "r") -> Any:
    return run_etl(dataset_from(spec), lake, run_id=run_id, namespace=NS, spark=spark, env=SALT)


def test_csv_with_renames_casts_dedupe_masks_and_warn(
    spark: SparkSession, lake: Lake, tmp_path: Path
) -> None:
    pacsv.write_csv(PEOPLE, tmp_path / "people.csv")
    spec = _people_spec(f"file://{tmp_path}/people.csv", "csv", options={"header": "true"})
    result = _run(spark, lake, spec)
    assert result.succeeded, result.message
    assert result.reason == "QualityWarnings"  # score "x" does not cast: null, and Warn writes
    assert result.quality_passed is False
    assert [(q.rule, q.failed_rows) for q in result.quality] == [("notNull", 1), ("unique", 0)]
    assert result.rows == 4  # one exact duplicate dropped
    rows = {r["id"]: r for r in DeltaTable(result.table_uri).to_pyarrow_table().to_pylist()}
    assert sorted(rows) == [1, 2, 3, 4]
    ada = rows[1]
    assert ada["name"] == REDACTED and rows[4]["name"] is None
    assert ada["email"] == hashlib.sha256(b"pepperada@x.org").hexdigest()
    assert ada["born"] == datetime(1815, 1, 1, tzinfo=UTC)
    assert rows[3]["score"] is None and rows[1]["score"] == 9.5
    pii = {c.name: c.pii for c in result.schema}
    assert pii == {"id": [], "name": ["person"], "email": ["email"], "born": [], "score": []}


def test_append_mode_adds_a_version(spark: SparkSession, lake: Lake, tmp_path: Path) -> None:
    pq.write_table(PEOPLE, tmp_path / "people.parquet")
    spec = {
        "source": {"uri": f"file://{tmp_path}/people.parquet", "format": "parquet"},
        "transform": {"sql": "SELECT Id AS id, email FROM source WHERE Id <> '4'"},
        "privacy": {"columns": [{"column": "email", "method": "truncate", "length": 3}]},
        "output": {"mode": "append", "partitionBy": ["id"]},
    }
    first = _run(spark, lake, spec, "a1")
    second = _run(spark, lake, spec, "a2")
    assert (first.version, first.rows) == (0, 4)
    assert (second.version, second.rows) == (1, 8)
    # The digest recorded before each commit is the content of the whole version it made.
    uri = lake.spark_uri(f"tables/{NS}/ds")
    for result in (first, second):
        assert result.version is not None
        written = delta_io.read_version(spark, uri, result.version)
        assert delta_io.content_digest(written) == (result.rows, result.digest)
    emails = {r["email"] for r in DeltaTable(second.table_uri).to_pyarrow_table().to_pylist()}
    assert emails == {"ada", "ala", "gra"}
    assert Path(lake.local_path(f"tables/{NS}/ds/id=1")).is_dir()


@pytest.mark.parametrize("fmt", ["json", "delta"])
def test_json_and_delta_sources(spark: SparkSession, lake: Lake, tmp_path: Path, fmt: str) -> None:
    table = PEOPLE.select(["Id", "score"])
    if fmt == "json":
        lines = [
            f'{{"Id": "{i}", "score": "{s}"}}'
            for i, s in zip(*table.to_pydict().values(), strict=True)
        ]
        (tmp_path / "people.json").write_text("\n".join(lines) + "\n")
        uri = f"file://{tmp_path}/people.json"
    else:
        write_deltalake(str(tmp_path / "people-delta"), table)
        uri = f"file://{tmp_path}/people-delta"
    spec = {
        "source": {"uri": uri, "format": fmt},
        "transform": {"casts": {"Id": "int"}, "dedupe": {"keys": ["Id"]}},
    }
    result = _run(spark, lake, spec)
    assert result.succeeded, result.message
    assert result.rows == 4
    assert result.input_uri == uri
    assert result.schema[0].type == "int"
