"""The jar cache: pins that match the installed Spark, the filter that drops jars Spark already
ships, and a clear error when Maven is unreachable."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from neuraxis.dev import jars


def test_delta_artifact_is_built_for_the_installed_spark() -> None:
    major_minor = ".".join(jars.spark_version().split(".")[:2])
    artifact = jars.DELTA_COORDINATE.split(":")[1]
    assert artifact == f"delta-spark_{major_minor}_2.13"


def test_hadoop_aws_matches_the_bundled_hadoop() -> None:
    bundled = sorted((jars.spark_home() / "jars").glob("hadoop-client-api-*.jar"))
    assert bundled, "pyspark ships hadoop-client-api"
    hadoop_version = bundled[0].name.removeprefix("hadoop-client-api-").removesuffix(".jar")
    assert jars.HADOOP_AWS_COORDINATE.endswith(f":{hadoop_version}")


def test_bundled_artifacts_are_dropped_in_any_version() -> None:
    bundled = [
        "jackson-core-2.21.2.jar",
        "hadoop-client-api-3.5.0.jar",
        "parquet-hadoop-1.17.0.jar",
    ]
    resolved = [
        "com.fasterxml.jackson.core_jackson-core-2.13.5.jar",
        "org.apache.hadoop_hadoop-client-api-3.4.2.jar",
        "org.apache.parquet_parquet-hadoop-1.16.0.jar",
        "io.delta_delta-spark_4.2_2.13-4.4.0.jar",
        "io.delta_delta-storage-4.4.0.jar",
        # same prefix, different artifact: kept
        "com.fasterxml.jackson.core_jackson-core-extras-1.0.jar",
    ]
    assert jars.select_jars(resolved, bundled) == [
        "com.fasterxml.jackson.core_jackson-core-extras-1.0.jar",
        "io.delta_delta-spark_4.2_2.13-4.4.0.jar",
        "io.delta_delta-storage-4.4.0.jar",
    ]


def test_set_key_depends_on_pins_and_spark_only() -> None:
    a = jars.set_key(["x:y:1", "a:b:2"], "4.2.0")
    assert a == jars.set_key(["a:b:2", "x:y:1"], "4.2.0")
    assert a != jars.set_key(["a:b:2", "x:y:2"], "4.2.0")
    assert a != jars.set_key(["a:b:2", "x:y:1"], "4.3.0")


def test_cache_lives_outside_the_checkout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(jars.JARS_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert jars.set_dir("delta").parent == tmp_path / "neuraxis" / "jars"
    with pytest.raises(jars.JarsError, match="unknown jar set 'nope'"):
        jars.set_dir("nope")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_maven_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(jars.JARS_DIR_ENV, str(tmp_path))
    monkeypatch.setenv(jars.MAVEN_REPO_ENV, f"http://127.0.0.1:{_closed_port()}/maven2")
    with pytest.raises(jars.JarsError, match="is unreachable") as info:
        jars.ensure_jars(["delta"], progress=lambda _: None)
    assert str(tmp_path) in str(info.value)
    assert not any(tmp_path.glob("delta-*/manifest.json"))


def test_a_cached_set_needs_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    first = jars.ensure_jars(["delta"])  # resolved by make set-up (or the Spark fixture)
    monkeypatch.setenv(jars.MAVEN_REPO_ENV, f"http://127.0.0.1:{_closed_port()}/maven2")
    again = jars.ensure_jars(["delta"], progress=lambda _: None)
    assert again == first
    assert jars.cached_jars(["delta"]) == first
    names = [p.name for p in first]
    assert any(n.startswith("io.delta_delta-spark_") for n in names)
    assert not any("hadoop-client" in n or "parquet-" in n for n in names)


def test_an_incomplete_set_is_not_used(tmp_path: Path) -> None:
    (tmp_path / "x.jar").write_bytes(b"abc")
    (tmp_path / jars.MANIFEST).write_text('{"jars": [{"file": "x.jar", "size": 4}]}')
    assert jars._read_manifest(tmp_path) is None
    (tmp_path / jars.MANIFEST).write_text('{"jars": [{"file": "x.jar", "size": 3}]}')
    assert jars._read_manifest(tmp_path) == [tmp_path / "x.jar"]


def test_an_s3_transform_input_brings_the_s3_jars(tmp_path: Path) -> None:
    from neuraxis.lake import Lake
    from neuraxis.workloads.etl.run import jar_sets_for
    from tests.etl.conftest import dataset_from

    local: dict[str, object] = {"source": {"builtin": {"name": "sensors"}}}
    lake = Lake(str(tmp_path / "lake"))
    assert jar_sets_for(dataset_from(local), lake, {}) == ["delta"]
    with_input = {
        **local,
        "transform": {
            "sql": "SELECT * FROM source JOIN f USING (machine_id)",
            "inputs": [{"name": "f", "uri": "s3://raw/f.json", "format": "json"}],
        },
    }
    assert jar_sets_for(dataset_from(with_input), lake, {}) == ["delta", "s3"]
