"""The lake on S3 for real: a MinIO server (built by the project's toolchain) on loopback, an ETL
run into s3://<bucket>/lake, read back from Python (delta-rs, boto3) and from Spark (s3a with
hadoop-aws from the cached "s3" jar set). Spark runs in subprocesses: the s3a jars must be on the
class path when the JVM starts, and the shared test session has only Delta's."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from deltalake import DeltaTable

from neuraxis.dev import lake as dev_lake
from neuraxis.dev.lake import LakeServer
from neuraxis.dev.toolchain import ToolchainError
from neuraxis.lake import Lake, S3Settings
from neuraxis.lineage import read_events
from tests.etl.conftest import REPO

pytestmark = pytest.mark.engine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def minio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LakeServer]:
    """The project's own MinIO start-up (`neuraxis.dev.lake`), on loopback."""
    home = tmp_path_factory.mktemp("minio-home")
    try:
        server = dev_lake.start(home, port=_free_port(), bucket="unused-" + secrets.token_hex(3))
    except (dev_lake.LakeServerError, ToolchainError) as exc:
        pytest.fail(f"MinIO did not start: {exc}")
    try:
        yield server
    finally:
        dev_lake.stop(home)


SPEC = {
    "apiVersion": "neuraxis.dev/v1alpha1",
    "kind": "Dataset",
    "metadata": {"name": "s3-readings"},
    "spec": {
        "source": {"builtin": {"name": "sensors", "rows": 500, "seed": 9}},
        "quality": {
            "onFailure": "Quarantine",
            "expectations": [{"rule": "notNull", "column": "machine_id"}],
        },
    },
}

SPARK_READ = """
import json, sys
from neuraxis.crds.dataset import Engine
from neuraxis.dev.jars import ensure_jars
from neuraxis.lake import Lake
from neuraxis.workloads.etl import delta_io
from neuraxis.workloads.etl.spark_session import local_conf, start_spark
lake = Lake(sys.argv[1])
jars = ensure_jars(["delta", "s3"])
spark = start_spark(local_conf(Engine(), lake, jars, app_name="s3-read", cores=2))
uri = lake.spark_uri(sys.argv[2])
rows, digest = delta_io.content_digest(delta_io.read_version(spark, uri))
print(json.dumps({"uri": uri, "rows": rows, "digest": digest}))
"""


def test_etl_into_minio_read_back_from_python_and_spark(minio: LakeServer, tmp_path: Path) -> None:
    import boto3

    bucket = "lake-" + secrets.token_hex(4)
    boto3.client(
        "s3",
        endpoint_url=minio.endpoint,
        aws_access_key_id=minio.access_key,
        aws_secret_access_key=minio.secret_key,
        region_name="us-east-1",
    ).create_bucket(Bucket=bucket)
    root = f"s3://{bucket}/lake"
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    env = {**os.environ, **minio.env(), "NEURAXIS_TERMINATION_LOG": str(tmp_path / "term")}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "neuraxis.workloads.etl",
            "--spec",
            str(spec),
            "--namespace",
            "s3",
            "--run-id",
            "s3-run",
            "--lake",
            root,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    compact = json.loads((tmp_path / "term").read_text())
    assert compact["outcome"] == "Succeeded"

    s3 = S3Settings(minio.endpoint, minio.access_key, minio.secret_key, "us-east-1")
    lake = Lake(root, s3=s3)
    result = lake.read_json("runs/s3/s3-run/result.json")
    assert result["table"]["uri"] == f"{root}/tables/s3/s3-readings"
    table = DeltaTable(result["table"]["uri"], storage_options=lake.storage_options())
    assert table.version() == result["version"] == 0
    assert table.to_pyarrow_table().num_rows == result["rows"]
    assert result["rows"] + result["quarantinedRows"] == 500
    assert [e["eventType"] for e in read_events(lake)] == ["START", "COMPLETE"]

    read = subprocess.run(
        [sys.executable, "-c", SPARK_READ, root, "tables/s3/s3-readings"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert read.returncode == 0, read.stderr[-3000:]
    seen = json.loads(read.stdout.strip().splitlines()[-1])
    assert seen["uri"].startswith(f"s3a://{bucket}/")
    assert (seen["rows"], seen["digest"]) == (result["rows"], result["table"]["digest"])
