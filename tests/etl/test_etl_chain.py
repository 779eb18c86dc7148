"""The example chain on real Spark and Delta: sensor readings (builtin source, quarantine, hashed
e-mails) then sensor features derived from them. One run of the chain is shared by the tests that
inspect it; the tests that need more runs say so."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from deltalake import DeltaTable

from neuraxis.crds.dataset import Dataset
from neuraxis.lake import Lake
from neuraxis.lineage import read_events
from neuraxis.workloads.etl import builtin_data, delta_io
from neuraxis.workloads.etl.report import EtlResult
from neuraxis.workloads.etl.run import run_etl
from tests.etl.conftest import EXAMPLES, SALT_ENV, load_dataset

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

pytestmark = pytest.mark.engine
NS = "factory"


@dataclass(frozen=True)
class Chain:
    lake: Lake
    readings: EtlResult
    features: EtlResult


@pytest.fixture(scope="module")
def chain(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Chain:
    lake = Lake(str(tmp_path_factory.mktemp("chain") / "lake"))
    readings = run_etl(
        load_dataset(EXAMPLES / "01-sensor-readings.yaml"),
        lake,
        run_id="readings-1",
        namespace=NS,
        spark=spark,
        env=SALT_ENV,
    )
    features = run_etl(
        load_dataset(EXAMPLES / "02-sensor-features.yaml"),
        lake,
        run_id="features-1",
        namespace=NS,
        spark=spark,
        env=SALT_ENV,
    )
    return Chain(lake, readings, features)


def _pinned_features(version: int) -> Dataset:
    doc = load_dataset(EXAMPLES / "02-sensor-features.yaml").to_wire()
    doc["spec"]["source"]["from"]["datasetRef"]["version"] = version
    return Dataset.model_validate(doc)


def test_readings_quarantine_bad_rows_and_pass_the_gate(chain: Chain) -> None:
    r = chain.readings
    assert (r.outcome, r.reason) == ("Succeeded", "RowsQuarantined"), r.message
    assert r.version == 0
    assert r.quality_passed is True
    # 5000 generated, 12 exact duplicates deduped, 4 x 12 bad rows quarantined.
    assert r.quarantined_rows == 48
    assert r.rows == 5000 - 12 - 48
    by_rule = {(q.rule, q.column): q for q in r.quality}
    assert by_rule[("notNull", "machine_id")].failed_rows == 12
    assert by_rule[("unique", "machine_id,ts")].passed  # dedupe ran before the gate
    assert by_rule[("rowCount", None)].passed
    assert r.table_uri == chain.lake.uri("tables/factory/sensor-readings")
    assert r.table_name == "sensor_readings"
    schema = {c.name: c for c in r.schema}
    assert schema["operator_email"].pii == ["email", "person"]
    assert schema["temperature"].type == "double"
    assert r.digest is not None and r.digest.startswith("sha256:")
    assert r.sources == ("builtin://sensors?rows=5000&seed=7",)
    compact = r.to_compact()
    assert compact["quarantinedRows"] == 48 and compact["digest"] == r.digest


def test_features_derive_from_the_readings_table(chain: Chain) -> None:
    f = chain.features
    assert (f.outcome, f.reason) == ("Succeeded", "TableWritten"), f.message
    assert f.input_uri == chain.readings.table_uri
    assert f.input_version == 0
    assert f.rows == chain.readings.rows
    assert [c.name for c in f.schema][-3:] == ["heat_stress", "in_maintenance", "failure"]
    # Lineage reaches the raw source through the upstream commit.
    assert f.sources == chain.readings.sources
    assert f.lineage().dataset_digest == f.digest


def test_training_reads_the_digest_the_etl_recorded(chain: Chain, spark: SparkSession) -> None:
    from neuraxis.workloads.train.data import read_table

    for result in (chain.readings, chain.features):
        uri = chain.lake.spark_uri(f"tables/{NS}/{result.dataset}")
        # Recorded once, before the commit, and it is the content of the version committed.
        written = delta_io.read_version(spark, uri, result.version)
        assert delta_io.content_digest(written) == (result.rows, result.digest)
    data = read_table(
        chain.lake, NS, "sensor-features", label="failure", task="classification", features=[]
    )
    assert data.lineage is not None
    assert (data.lineage.version, data.lineage.digest) == (
        chain.features.version,
        chain.features.digest,
    )


def test_quarantine_table_holds_the_failed_rows_and_their_rules(
    chain: Chain, spark: SparkSession
) -> None:
    from pyspark.sql import functions as sf

    uri = chain.lake.spark_uri("quarantine/factory/sensor-readings")
    bad = delta_io.read_version(spark, uri, chain.readings.quarantine_version)
    assert bad.count() == 48
    rules = {r[0] for r in bad.select(sf.explode("_failed_rules")).distinct().collect()}
    assert rules == {
        "notNull:machine_id",
        "range:temperature",
        "regex:operator_email",
        "allowedValues:status",
    }
    assert bad.filter(sf.size("_failed_rules") == 0).count() == 0
    assert {r[0] for r in bad.select("_run_id").distinct().collect()} == {"readings-1"}


def _all_strings(table_uri: str) -> set[str]:
    table = DeltaTable(table_uri).to_pyarrow_table()
    values: set[str] = set()
    for column in table.columns:
        values.update(str(v) for v in column.to_pylist() if v is not None)
    return values


def test_no_raw_pii_value_reaches_the_lake(chain: Chain) -> None:
    raw = set(builtin_data.sensors_table(5000, 7)["operator_email"].to_pylist()) - {None}
    assert len(raw) > 24  # the operators' addresses and the malformed variants
    unsalted = {hashlib.sha256(v.encode()).hexdigest() for v in raw}
    lake_root = chain.lake.local_path("")
    for rel in (
        "tables/factory/sensor-readings",
        "quarantine/factory/sensor-readings",
        "tables/factory/sensor-features",
    ):
        cells = _all_strings(str(lake_root / rel))
        assert not cells & raw, rel
        assert not cells & unsalted, f"{rel}: unsalted hashes are reversible"
    # Files that are not Parquet (Delta logs with column stats, lineage, results) in clear text.
    for path in lake_root.rglob("*"):
        if path.is_file() and not path.name.endswith(".parquet"):
            text = path.read_bytes()
            assert not any(v.encode() in text for v in raw), path
    salted = hashlib.sha256(
        (SALT_ENV["NEURAXIS_SECRET_LAKE_SALT_SALT"] + sorted(raw)[0]).encode()
    ).hexdigest()
    emails = _all_strings(str(lake_root / "tables/factory/sensor-readings"))
    assert all(len(v) == 64 for v in emails if v.isalnum() and len(v) >= 32)
    assert salted in emails or salted in _all_strings(
        str(lake_root / "quarantine/factory/sensor-readings")
    )


def test_pii_tags_are_in_the_delta_schema(chain: Chain) -> None:
    table = DeltaTable(str(chain.lake.local_path("tables/factory/sensor-readings")))
    fields = {f.name: f for f in table.schema().fields}
    assert fields["operator_email"].metadata["pii"] == ["email", "person"]
    assert fields["operator_email"].metadata["masking"] == "hash"
    assert "pii" not in fields["temperature"].metadata


def test_lineage_events_name_inputs_outputs_and_schemas(chain: Chain) -> None:
    events = read_events(chain.lake, "readings-1")
    assert [e["eventType"] for e in events] == ["START", "COMPLETE"]
    done = events[-1]
    outputs = {o["name"]: o for o in done["outputs"]}
    table = outputs["tables/factory/sensor-readings"]
    assert table["namespace"] == chain.lake.root
    assert {"name": "operator_email", "type": "string"} in table["facets"]["schema"]["fields"]
    assert table["facets"]["version"]["datasetVersion"] == "0"
    assert "quarantine/factory/sensor-readings" in outputs
    derived = read_events(chain.lake, "features-1")[-1]
    assert derived["inputs"][0]["name"] == "tables/factory/sensor-readings"
    assert derived["inputs"][0]["facets"]["version"]["datasetVersion"] == "0"


def test_retried_run_commits_no_second_version(chain: Chain, spark: SparkSession) -> None:
    again = run_etl(
        load_dataset(EXAMPLES / "01-sensor-readings.yaml"),
        chain.lake,
        run_id="readings-1",
        namespace=NS,
        spark=spark,
        env=SALT_ENV,
    )
    assert again.succeeded and again.version == 0
    assert again.digest == chain.readings.digest
    uri = chain.lake.spark_uri("tables/factory/sensor-readings")
    assert [c.version for c in delta_io.history(spark, uri) or []] == [0]


def test_pinned_reader_sees_identical_data_after_later_writes(
    chain: Chain, spark: SparkSession
) -> None:
    # A new readings version (other seed), then features pinned to version 0 and unpinned.
    doc = load_dataset(EXAMPLES / "01-sensor-readings.yaml").to_wire()
    doc["spec"]["source"]["builtin"]["seed"] = 8
    newer = run_etl(
        Dataset.model_validate(doc),
        chain.lake,
        run_id="readings-2",
        namespace=NS,
        spark=spark,
        env=SALT_ENV,
    )
    assert newer.succeeded and newer.version == 1
    assert newer.digest != chain.readings.digest
    uri = chain.lake.spark_uri("tables/factory/sensor-readings")
    _, v0 = delta_io.content_digest(delta_io.read_version(spark, uri, 0))
    assert v0 == chain.readings.digest
    pinned = run_etl(
        _pinned_features(0), chain.lake, run_id="features-2", namespace=NS, spark=spark
    )
    assert pinned.input_version == 0 and pinned.version == 1
    assert pinned.digest == chain.features.digest  # same input version, same content
    latest = run_etl(
        load_dataset(EXAMPLES / "02-sensor-features.yaml"),
        chain.lake,
        run_id="features-3",
        namespace=NS,
        spark=spark,
    )
    assert latest.input_version == 1
    assert latest.digest != chain.features.digest


def test_same_spec_and_seed_give_the_same_digest(
    chain: Chain, spark: SparkSession, tmp_path: Path
) -> None:
    other = Lake(str(tmp_path / "other-lake"))
    again = run_etl(
        load_dataset(EXAMPLES / "01-sensor-readings.yaml"),
        other,
        run_id="elsewhere",
        namespace="other",
        spark=spark,
        env=SALT_ENV,
    )
    assert again.digest == chain.readings.digest
    # The digest ignores file layout and row order.
    df = delta_io.read_version(spark, chain.lake.spark_uri("tables/factory/sensor-readings"), 0)
    assert delta_io.content_digest(df.repartition(7))[1] == chain.readings.digest
    assert delta_io.content_digest(df.coalesce(1).orderBy("rpm"))[1] == chain.readings.digest
    assert delta_io.content_digest(df.limit(10))[1] != chain.readings.digest
