"""The shared Spark process of `neuraxis run` (neuraxis/workloads/etl/server.py): what one step
leaves in the session is gone before the next, and bad requests get an answer, not a dead server.
The whole path (steps of a run in one Spark) is tests/local/test_shared_spark.py."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from neuraxis.workloads.etl.cli import etl_app
from neuraxis.workloads.etl.server import EtlServer, forget_step_state
from tests.etl.conftest import EXAMPLES

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def test_a_step_leaves_no_views_or_cached_data(spark: SparkSession) -> None:
    frame = spark.range(10)
    frame.createOrReplaceTempView("earlier_step_input")
    frame.cache().count()
    cache = spark._jsparkSession.sharedState().cacheManager()
    assert not cache.isEmpty()
    forget_step_state(spark)
    assert [t.name for t in spark.catalog.listTables() if t.isTemporary] == []
    assert cache.isEmpty()


def test_bad_requests_are_answered_and_the_server_keeps_serving(tmp_path: Path) -> None:
    server = EtlServer(typer.main.get_command(etl_app()), None)
    logs = [tmp_path / f"step-{i}.log" for i in range(2)]
    spec = EXAMPLES / "01-sensor-readings.yaml"
    flags = ["etl", "--spec", str(spec), "--namespace", "default", "--run-id", "r1"]
    requests = [
        {"args": ["etl", "--namespace", "default"], "env": {}, "log": str(logs[0])},
        {"args": [*flags, "--upstream", "no-equals-sign"], "env": {}, "log": str(logs[1])},
    ]
    lines = "".join(json.dumps(r) + "\n" for r in requests) + "{not json\n"
    replies = io.StringIO()
    server.serve(io.StringIO(lines), replies)
    answers = [json.loads(line) for line in replies.getvalue().splitlines()]
    assert answers[0] == {"exitCode": 2}
    assert "Missing option '--spec'" in logs[0].read_text()
    assert answers[1] == {"exitCode": 2}
    assert "expected <dataset>=<table uri>" in logs[1].read_text()
    assert answers[2]["exitCode"] == 1 and "JSONDecodeError" in answers[2]["error"]
    assert server.spark is None  # nothing got as far as Spark
