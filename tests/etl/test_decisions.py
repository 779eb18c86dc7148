"""The pure decisions of the pipeline: the quality verdict, the salt, SQL wrapping, error
classification and the digest's canonical form."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

import pytest

from neuraxis.crds.common import SecretKeyRef
from neuraxis.crds.dataset import MaskedColumn, Privacy, Quality
from neuraxis.workloads.etl import delta_io, errors, privacy, quality, transform

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def _plan(on_failure: str, *expectations: Mapping[str, object]) -> quality.QualityPlan:
    q = Quality.model_validate({"onFailure": on_failure, "expectations": list(expectations)})
    rows: list[quality.PlannedRule] = []
    tables: list[quality.PlannedRule] = []
    for i, e in enumerate(q.expectations):
        rule = quality.PlannedRule(i, quality.rule_label(e), e)
        (rows if e.rule in quality.ROW_RULES else tables).append(rule)
    return quality.QualityPlan(q.on_failure, tuple(rows), tuple(tables))


NOT_NULL: Mapping[str, object] = {"rule": "notNull", "column": "id"}
ROW_COUNT: Mapping[str, object] = {"rule": "rowCount", "min": 5}


def test_fail_mode_refuses_any_failure() -> None:
    plan = _plan("Fail", NOT_NULL, ROW_COUNT)
    verdict = quality.judge(plan, quality.Measurements(10, 9, {"notNull:id": 1}), NOW)
    assert not verdict.write
    assert verdict.reason == errors.QUALITY_GATE_FAILED
    assert "notNull(id): 1 of 10 rows failed" in verdict.message
    assert [r.passed for r in verdict.results] == [False, True]


def test_warn_mode_writes_and_records() -> None:
    plan = _plan("Warn", NOT_NULL, ROW_COUNT)
    verdict = quality.judge(plan, quality.Measurements(10, 9, {"notNull:id": 1}), NOW)
    assert verdict.write and not verdict.quarantine
    assert not verdict.quality_passed
    assert verdict.reason == quality.QUALITY_WARNINGS


def test_quarantine_mode_moves_bad_rows_and_passes() -> None:
    plan = _plan("Quarantine", NOT_NULL, ROW_COUNT)
    verdict = quality.judge(plan, quality.Measurements(10, 7, {"notNull:id": 3}), NOW)
    assert verdict.write and verdict.quarantine and verdict.quality_passed
    assert verdict.quarantined_rows == 3
    assert verdict.results[0].failed_rows == 3
    assert verdict.results[1].observed == "7 rows, wanted [5, ]"


def test_quarantine_mode_counts_rows_after_the_split() -> None:
    plan = _plan("Quarantine", NOT_NULL, ROW_COUNT)
    verdict = quality.judge(plan, quality.Measurements(10, 4, {"notNull:id": 6}), NOW)
    assert not verdict.write
    assert verdict.reason == errors.QUALITY_GATE_FAILED
    assert "table rules cannot be quarantined" in verdict.message


def test_every_row_quarantined_fails() -> None:
    plan = _plan("Quarantine", NOT_NULL)
    verdict = quality.judge(plan, quality.Measurements(4, 0, {"notNull:id": 4}), NOW)
    assert not verdict.write
    assert verdict.reason == errors.ALL_ROWS_QUARANTINED


def test_freshness_is_measured_from_the_run_start() -> None:
    plan = _plan("Fail", {"rule": "freshness", "column": "ts", "maxAgeSeconds": 3600})
    fresh = int(NOW.timestamp() - 600) * 1_000_000
    stale = int(NOW.timestamp() - 7200) * 1_000_000
    ok = quality.judge(plan, quality.Measurements(3, 3, {}, {"freshness:ts": fresh}), NOW)
    assert ok.write and ok.results[0].observed == "newest ts is 600s old, allowed 3600s"
    old = quality.judge(plan, quality.Measurements(3, 3, {}, {"freshness:ts": stale}), NOW)
    assert not old.write
    empty = quality.judge(plan, quality.Measurements(0, 0, {}, {"freshness:ts": None}), NOW)
    assert not empty.write


def test_duplicate_rules_get_distinct_labels() -> None:
    from pyspark.sql.types import DoubleType, StructField, StructType

    schema = StructType([StructField("t", DoubleType())])
    q = Quality.model_validate(
        {
            "expectations": [
                {"rule": "range", "column": "t", "min": 0},
                {"rule": "range", "column": "t", "max": 9},
            ]
        }
    )
    plan = quality.plan_quality(q, schema)
    assert [r.label for r in plan.row_rules] == ["range:t", "range:t#1"]


def test_rules_on_missing_or_mistyped_columns_name_the_field() -> None:
    from pyspark.sql.types import StringType, StructField, StructType

    schema = StructType([StructField("s", StringType())])
    missing = Quality.model_validate({"expectations": [{"rule": "notNull", "column": "x"}]})
    with pytest.raises(errors.EtlError) as info:
        quality.plan_quality(missing, schema)
    assert info.value.reason == errors.SCHEMA_MISMATCH
    assert "spec.quality.expectations[0].column: column 'x' does not exist" in info.value.message
    text = Quality.model_validate({"expectations": [{"rule": "range", "column": "s", "min": 1}]})
    with pytest.raises(errors.EtlError, match="range needs a numeric column; 's' is string"):
        quality.plan_quality(text, schema)


def _privacy(method: str = "hash") -> Privacy:
    return Privacy(
        columns=[MaskedColumn(column="email", method=method)],  # type: ignore[arg-type]
        salt_secret_ref=SecretKeyRef(name="lake-salt", key="hash.salt"),
    )


def test_salt_comes_from_the_documented_env_var() -> None:
    ref = SecretKeyRef(name="lake-salt", key="hash.salt")
    assert privacy.salt_env_name(ref) == "NEURAXIS_SECRET_LAKE_SALT_HASH_SALT"
    env = {"NEURAXIS_SECRET_LAKE_SALT_HASH_SALT": "pepper"}
    assert privacy.resolve_salt(_privacy(), env) == "pepper"
    assert privacy.resolve_salt(_privacy("redact"), {}) is None


@pytest.mark.parametrize("env", [{}, {"NEURAXIS_SECRET_LAKE_SALT_HASH_SALT": ""}])
def test_missing_salt_is_refused(env: dict[str, str]) -> None:
    with pytest.raises(errors.EtlError) as info:
        privacy.resolve_salt(_privacy(), env)
    assert info.value.reason == errors.MISSING_SALT
    assert "NEURAXIS_SECRET_LAKE_SALT_HASH_SALT" in info.value.message


def test_sql_is_wrapped_as_a_subquery() -> None:
    assert transform.wrap_query("SELECT a FROM source;") == (
        "SELECT * FROM (SELECT a FROM source\n) AS neuraxis_transform"
    )
    # A trailing line comment cannot swallow the closing parenthesis.
    assert transform.wrap_query("SELECT a FROM source -- all").endswith(
        "-- all\n) AS neuraxis_transform"
    )


def test_engine_errors_are_classified_with_their_informative_line() -> None:
    text = (
        "An error occurred while calling o94.parquet.\n"
        ": org.apache.spark.SparkException: [FAILED_READ_FILE.CANNOT_READ_FILE_FOOTER] Encountered "
        "error while reading file file:/x.parquet.\n\tat org.apache..."
    )
    err = errors.classify(RuntimeError(text), "spec.source.uri")
    assert err.reason == errors.SOURCE_UNREADABLE
    assert err.message.startswith("spec.source.uri: [FAILED_READ_FILE.CANNOT_READ_FILE_FOOTER]")
    missing = errors.classify(RuntimeError("[PATH_NOT_FOUND] Path does not exist: file:/x"))
    assert missing.reason == errors.SOURCE_NOT_FOUND
    assert errors.classify(ValueError("boom")).reason == errors.ETL_FAILED


def test_digest_depends_on_schema_rows_and_sums() -> None:
    schema = [("a", "int")]
    d = delta_io.digest_from_sums(schema, 2, [1, 2, 3])
    assert d.startswith("sha256:") and len(d) == 71
    assert d == delta_io.digest_from_sums(schema, 2, [1, 2, 3])
    assert d != delta_io.digest_from_sums([("a", "bigint")], 2, [1, 2, 3])
    assert d != delta_io.digest_from_sums(schema, 3, [1, 2, 3])
    assert d != delta_io.digest_from_sums(schema, 2, [1, 2, 4])


def test_commit_metadata_round_trips() -> None:
    text = delta_io.commit_metadata("run-9", ["builtin://sensors?rows=5&seed=1"])
    commit = delta_io.Commit(3, "WRITE", delta_io.parse_commit_metadata(text))
    assert commit.run_id == "run-9"
    assert commit.sources == ["builtin://sensors?rows=5&seed=1"]
    assert delta_io.parse_commit_metadata("not json") == {}
