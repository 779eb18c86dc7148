"""Never a partially visible version: an ETL process killed (SIGKILL) while it writes data files
leaves the previous version as the latest, intact and readable, and no partial commit in the
history. The next run commits normally; the orphaned files are never read."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from deltalake import DeltaTable

from neuraxis.lake import Lake
from neuraxis.workloads.etl import delta_io
from neuraxis.workloads.etl.run import run_etl
from tests.etl.conftest import REPO, dataset_from

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

pytestmark = pytest.mark.engine
NS = "atomic"
NAME = "readings"
# Big enough that writing takes a while (many partition files), small enough for 2 cores.
KILLED_ROWS = 600_000
WAIT_FOR_FILES_S = 300.0


def _spec(rows: int) -> dict[str, Any]:
    return {
        "source": {"builtin": {"name": "sensors", "rows": rows, "seed": 3}},
        "output": {"partitionBy": ["machine_id"]},
    }


def _data_files(table: Path) -> set[Path]:
    return {p for p in table.rglob("*.parquet") if "_delta_log" not in p.parts}


def _commit(table: Path, version: int) -> Path:
    return table / "_delta_log" / f"{version:020d}.json"


def test_killed_writer_leaves_the_previous_version_intact(
    spark: SparkSession, tmp_path: Path
) -> None:
    lake = Lake(str(tmp_path / "lake"))
    first = run_etl(
        dataset_from(_spec(400), name=NAME), lake, run_id="v0", namespace=NS, spark=spark, env={}
    )
    assert first.succeeded and first.version == 0, first.message
    table = lake.local_path(f"tables/{NS}/{NAME}")
    before = _data_files(table)

    spec_file = tmp_path / "spec.yaml"
    doc = {
        "apiVersion": "neuraxis.dev/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": NAME},
        "spec": _spec(KILLED_ROWS),
    }
    spec_file.write_text(yaml.safe_dump(doc))
    cmd = [
        sys.executable,
        "-m",
        "neuraxis.workloads.etl",
        "--spec",
        str(spec_file),
        "--namespace",
        NS,
        "--run-id",
        "killed",
        "--lake",
        lake.root,
    ]
    env = {
        **os.environ,
        "NEURAXIS_TERMINATION_LOG": str(tmp_path / "termination"),
        "NEURAXIS_SPARK_CORES": "2",
    }
    # A session of its own, so that the kill takes Spark's JVM (a child process) down too.
    stderr_file = tmp_path / "etl.stderr"
    err = stderr_file.open("wb")  # a file, not a pipe: a full pipe would stall the writer
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=err,
    )
    try:
        deadline = time.monotonic() + WAIT_FOR_FILES_S
        new_files: set[Path] = set()
        while time.monotonic() < deadline and proc.poll() is None:
            new_files = _data_files(table) - before
            if new_files:
                break
            time.sleep(0.02)
        if not new_files:
            stderr = stderr_file.read_text(errors="replace")[-2000:]
            pytest.fail(f"the writer never started writing data files: {stderr}")
        assert not _commit(table, 1).exists(), "killed too late: the commit already happened"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        err.close()

    # Mid-write: orphaned data files on disk, but no commit for them.
    assert _data_files(table) - before
    assert not _commit(table, 1).exists()
    uri = lake.spark_uri(f"tables/{NS}/{NAME}")
    assert [c.version for c in delta_io.history(spark, uri) or []] == [0]
    rows, digest = delta_io.content_digest(delta_io.read_version(spark, uri))
    assert (rows, digest) == (first.rows, first.digest)
    # An independent reader (delta-rs) agrees.
    assert DeltaTable(str(table)).version() == 0
    assert DeltaTable(str(table)).to_pyarrow_table().num_rows == first.rows

    after = run_etl(
        dataset_from(_spec(300), name=NAME), lake, run_id="v1", namespace=NS, spark=spark, env={}
    )
    assert after.succeeded and after.version == 1 and after.rows == 300
