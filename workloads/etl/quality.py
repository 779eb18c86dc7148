"""The quality gate: expectations checked in one aggregation pass, and the verdict.

Row rules (notNull, unique, range, regex, allowedValues) become one array column listing the
rules each row fails (`_failed_rules`): the aggregation counts failures per rule from it, and the
quarantine split reuses it, so the data is scanned once for all rules. Table rules (rowCount,
freshness) are computed in the same pass, over the rows that would be written (with Quarantine:
the rows that pass the row rules).

`plan_quality` (which columns, which labels) and `judge` (what the counts mean for the run) are
pure; `annotate` and `measure` build and run the Spark expressions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from neuraxis.crds.dataset import Expectation, Quality, QualityResult
from neuraxis.workloads.etl.errors import (
    ALL_ROWS_QUARANTINED,
    INVALID_EXPECTATION,
    QUALITY_GATE_FAILED,
    SCHEMA_MISMATCH,
    EtlError,
    classify,
    missing_column,
)

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession
    from pyspark.sql.types import StructType

FAILED_RULES = "_failed_rules"
ROW_RULES = ("notNull", "unique", "range", "regex", "allowedValues")
OnFailure = Literal["Fail", "Warn", "Quarantine"]

SUCCEEDED = "TableWritten"
ROWS_QUARANTINED = "RowsQuarantined"
QUALITY_WARNINGS = "QualityWarnings"

_NUMERIC = ("tinyint", "smallint", "int", "bigint", "float", "double", "decimal")
_TEMPORAL = ("timestamp", "timestamp_ntz", "date")


@dataclass(frozen=True)
class PlannedRule:
    """One expectation with its position in the spec and a stable label for `_failed_rules`."""

    index: int
    label: str
    expectation: Expectation

    @property
    def field(self) -> str:
        return f"spec.quality.expectations[{self.index}]"

    @property
    def columns(self) -> list[str]:
        e = self.expectation
        return list(e.columns) if e.columns else ([e.column] if e.column else [])


@dataclass(frozen=True)
class QualityPlan:
    on_failure: OnFailure
    row_rules: tuple[PlannedRule, ...] = ()
    table_rules: tuple[PlannedRule, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.row_rules and not self.table_rules


@dataclass(frozen=True)
class Measurements:
    """What the aggregation pass observed."""

    total: int
    passing: int
    failed: Mapping[str, int] = field(default_factory=dict)  # row-rule label -> failing rows
    newest_micros: Mapping[str, int | None] = field(default_factory=dict)  # freshness label


@dataclass(frozen=True)
class Verdict:
    """What the gate decided: write or not, and what to report."""

    write: bool
    quarantine: bool
    quality_passed: bool
    reason: str
    message: str
    results: tuple[QualityResult, ...]
    quarantined_rows: int


def rule_label(e: Expectation) -> str:
    if e.rule == "rowCount":
        return "rowCount"
    cols = "+".join(e.columns) if e.columns else (e.column or "")
    return f"{e.rule}:{cols}"


def _type_name(schema: StructType, column: str) -> str:
    return schema[column].dataType.simpleString()


def plan_quality(quality: Quality | None, schema: StructType) -> QualityPlan:
    """Check every rule against the schema and give each a unique label (pure)."""
    if quality is None:
        return QualityPlan(on_failure="Fail")
    names = schema.fieldNames()
    seen: set[str] = set()
    rows: list[PlannedRule] = []
    tables: list[PlannedRule] = []
    for i, e in enumerate(quality.expectations):
        label = rule_label(e)
        if label in seen:
            label = f"{label}#{i}"
        seen.add(label)
        rule = PlannedRule(index=i, label=label, expectation=e)
        for column in rule.columns:
            if column not in names:
                raise missing_column(f"{rule.field}.column", column, names)
        if e.rule == "range" and not _type_name(schema, e.column or "").startswith(_NUMERIC):
            raise EtlError(
                SCHEMA_MISMATCH,
                f"{rule.field}: range needs a numeric column; {e.column!r} is "
                f"{_type_name(schema, e.column or '')} (cast it in spec.transform.casts)",
            )
        if e.rule == "freshness" and _type_name(schema, e.column or "") not in _TEMPORAL:
            raise EtlError(
                SCHEMA_MISMATCH,
                f"{rule.field}: freshness needs a timestamp or date column; {e.column!r} is "
                f"{_type_name(schema, e.column or '')}",
            )
        (rows if e.rule in ROW_RULES else tables).append(rule)
    return QualityPlan(
        on_failure=quality.on_failure, row_rules=tuple(rows), table_rules=tuple(tables)
    )


def check_patterns(spark: SparkSession, plan: QualityPlan) -> None:
    """Compile every regex in the JVM (Java syntax, as the rule will run) before any data moves."""
    from pyspark.sql import functions as sf

    for rule in plan.row_rules:
        if rule.expectation.rule != "regex":
            continue
        try:
            probe = spark.range(1).select(
                sf.col("id").cast("string").rlike(rule.expectation.pattern or "")
            )
            probe.collect()
        except Exception as exc:
            raise EtlError(
                INVALID_EXPECTATION,
                f"{rule.field}.pattern: not a valid Java regular expression: "
                + classify(exc).message,
            ) from exc


def _fails(rule: PlannedRule) -> Column:
    """A boolean column: true when the row breaks the rule. Null values pass every rule but
    notNull (that is what notNull is for), as in SQL constraints."""
    from pyspark.sql import Window
    from pyspark.sql import functions as sf

    e = rule.expectation
    if e.rule == "notNull":
        return sf.col(e.column or "").isNull()
    if e.rule == "unique":
        cols = rule.columns
        all_set = sf.lit(True)
        for c in cols:
            all_set = all_set & sf.col(c).isNotNull()
        duplicated = sf.count(sf.lit(1)).over(Window.partitionBy(*cols)) > 1
        return all_set & duplicated
    value = sf.col(e.column or "")
    if e.rule == "range":
        low = value < sf.lit(e.min) if e.min is not None else sf.lit(False)
        high = value > sf.lit(e.max) if e.max is not None else sf.lit(False)
        return sf.coalesce(low | high, sf.lit(False))
    if e.rule == "regex":
        return sf.coalesce(~value.cast("string").rlike(e.pattern or ""), sf.lit(False))
    if e.rule == "allowedValues":
        return sf.coalesce(~value.cast("string").isin(list(e.values or [])), sf.lit(False))
    raise ValueError(f"{e.rule} is not a row rule")


def annotate(df: DataFrame, plan: QualityPlan) -> DataFrame:
    """`df` plus `_failed_rules`: the labels of the row rules each row breaks."""
    from pyspark.sql import functions as sf

    if not plan.row_rules:
        return df.withColumn(FAILED_RULES, sf.array().cast("array<string>"))
    flags = [sf.when(_fails(r), sf.lit(r.label)) for r in plan.row_rules]
    return df.withColumn(FAILED_RULES, sf.array_compact(sf.array(*flags)))


def measure(annotated: DataFrame, plan: QualityPlan) -> Measurements:
    """Every count the verdict needs, in one aggregation pass over the annotated rows."""
    from pyspark.sql import functions as sf

    passing = sf.size(sf.col(FAILED_RULES)) == 0
    considered = passing if plan.on_failure == "Quarantine" else sf.lit(True)
    aggs = [sf.count(sf.lit(1)).alias("total"), sf.count_if(passing).alias("passing")]
    for i, r in enumerate(plan.row_rules):
        aggs.append(sf.count_if(sf.array_contains(sf.col(FAILED_RULES), r.label)).alias(f"f{i}"))
    for i, r in enumerate(plan.table_rules):
        if r.expectation.rule == "freshness":
            micros = sf.unix_micros(sf.col(r.expectation.column or "").cast("timestamp"))
            aggs.append(sf.max(sf.when(considered, micros)).alias(f"t{i}"))
    row = annotated.agg(*aggs).collect()[0]
    fresh = {
        r.label: (None if row[f"t{i}"] is None else int(row[f"t{i}"]))
        for i, r in enumerate(plan.table_rules)
        if r.expectation.rule == "freshness"
    }
    return Measurements(
        total=int(row["total"]),
        passing=int(row["passing"]),
        failed={r.label: int(row[f"f{i}"]) for i, r in enumerate(plan.row_rules)},
        newest_micros=fresh,
    )


def _column_text(rule: PlannedRule) -> str | None:
    return ",".join(rule.columns) or None


def _table_result(
    rule: PlannedRule, m: Measurements, rows_written: int, now: datetime
) -> QualityResult:
    e = rule.expectation
    if e.rule == "rowCount":
        ok = (e.min is None or rows_written >= e.min) and (e.max is None or rows_written <= e.max)
        bounds = (
            f"[{'' if e.min is None else f'{e.min:g}'}, {'' if e.max is None else f'{e.max:g}'}]"
        )
        return QualityResult(
            rule=e.rule, column=None, passed=ok, observed=f"{rows_written} rows, wanted {bounds}"
        )
    newest = m.newest_micros.get(rule.label)
    if newest is None:
        return QualityResult(
            rule=e.rule, column=e.column, passed=False, observed=f"no {e.column} values"
        )
    age = now.timestamp() - newest / 1_000_000
    ok = age <= (e.max_age_seconds or 0)
    return QualityResult(
        rule=e.rule,
        column=e.column,
        passed=ok,
        observed=f"newest {e.column} is {age:.0f}s old, allowed {e.max_age_seconds}s",
    )


def judge(plan: QualityPlan, m: Measurements, now: datetime) -> Verdict:
    """What the run does with the measured data (pure)."""
    quarantining = plan.on_failure == "Quarantine"
    quarantined = m.total - m.passing if quarantining else 0
    rows_written = m.passing if quarantining else m.total
    results: list[QualityResult] = []
    for r in plan.row_rules:
        failed = m.failed.get(r.label, 0)
        note = "quarantined" if quarantining and failed else "failed"
        results.append(
            QualityResult(
                rule=r.expectation.rule,
                column=_column_text(r),
                passed=failed == 0,
                failed_rows=failed,
                observed=f"{failed} of {m.total} rows {note}",
            )
        )
    for r in plan.table_rules:
        results.append(_table_result(r, m, rows_written, now))
    ordered = sorted(
        zip([*plan.row_rules, *plan.table_rules], results, strict=True), key=lambda x: x[0].index
    )
    final = tuple(res for _, res in ordered)
    broken = [res for res in final if not res.passed]
    broken_tables = [res for r, res in ordered if not res.passed and r in plan.table_rules]
    summary = "; ".join(
        f"{res.rule}({res.column})" + (f": {res.observed}" if res.observed else "")
        if res.column
        else f"{res.rule}: {res.observed}"
        for res in broken
    )
    if plan.on_failure == "Fail" and broken:
        return Verdict(
            False, False, False, QUALITY_GATE_FAILED, f"quality gate failed: {summary}", final, 0
        )
    if plan.on_failure == "Warn":
        reason = QUALITY_WARNINGS if broken else SUCCEEDED
        message = f"written with quality warnings: {summary}" if broken else "table written"
        return Verdict(True, False, not broken, reason, message, final, 0)
    if quarantining:
        if broken_tables:
            text = "; ".join(f"{res.rule}: {res.observed}" for res in broken_tables)
            return Verdict(
                False,
                False,
                False,
                QUALITY_GATE_FAILED,
                f"quality gate failed (table rules cannot be quarantined): {text}",
                final,
                quarantined,
            )
        if m.total > 0 and m.passing == 0:
            return Verdict(
                False,
                False,
                False,
                ALL_ROWS_QUARANTINED,
                f"every one of the {m.total} rows failed a quality rule: {summary}",
                final,
                quarantined,
            )
        if quarantined:
            return Verdict(
                True,
                True,
                True,
                ROWS_QUARANTINED,
                f"{quarantined} of {m.total} rows quarantined: {summary}",
                final,
                quarantined,
            )
    return Verdict(True, False, True, SUCCEEDED, "table written", final, 0)


def no_quality_verdict() -> Verdict:
    return Verdict(True, False, True, SUCCEEDED, "table written", (), 0)
