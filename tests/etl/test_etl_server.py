"""The shared Spark process of `neuraxis run` (neuraxis/workloads/etl/server.py): what one step
leaves in the session is gone before the next, and bad requests get an answer, not a dead server.
The whole path (steps of a run in one Spark) is tests/local/test_shared_spark.py."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from neuraxis.workloads.etl.cli import etl_command
from neuraxis.workloads.etl.server import EtlServer, forget_step_state

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
    app = typer.Typer()
    app.command()(etl_command)
    server = EtlServer(typer.main.get_command(app), None)
    log = tmp_path / "step.log"
    requests = io.StringIO(
        json.dumps({"args": ["etl", "--namespace", "default"], "env": {}, "log": str(log)})
        + "\n{not json\n"
    )
    replies = io.StringIO()
    server.serve(requests, replies)
    answers = [json.loads(line) for line in replies.getvalue().splitlines()]
    assert answers[0] == {"exitCode": 2}
    assert "Missing option '--spec'" in log.read_text()
    assert answers[1]["exitCode"] == 1 and "JSONDecodeError" in answers[1]["error"]
    assert server.spark is None  # nothing asked for Spark
