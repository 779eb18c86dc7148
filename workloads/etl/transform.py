"""Reshape the source before the quality gate, in the order the spec documents: Spark SQL over the
view `source`, then renames, casts and dedupe. Every column the spec names is checked first, so a
mismatch fails with the spec field and the columns that do exist."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from neuraxis.crds.dataset import Transform
from neuraxis.workloads.etl.errors import (
    INVALID_SQL,
    SCHEMA_MISMATCH,
    EtlError,
    classify,
    missing_column,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

SOURCE_VIEW = "source"


def require_columns(field: str, wanted: Sequence[str], available: Sequence[str]) -> None:
    """SchemaMismatch naming `field` when a wanted column is missing."""
    for column in wanted:
        if column not in available:
            raise missing_column(field, column, list(available))


def wrap_query(sql: str) -> str:
    """The user's SQL as a sub-query: only a query parses there, so DDL or DML (`DROP TABLE`,
    `INSERT`) is rejected by the parser instead of being executed. The prefix shares the first
    line, so the parser's line numbers match the user's."""
    body = sql.strip().rstrip(";").rstrip()
    return f"SELECT * FROM ({body}\n) AS neuraxis_transform"


def run_sql(
    spark: SparkSession, df: DataFrame, sql: str, inputs: Mapping[str, DataFrame] | None = None
) -> DataFrame:
    from pyspark.errors import AnalysisException, ParseException

    for name, view in (inputs or {}).items():
        view.createOrReplaceTempView(name)
    # Last: an input can never stand in for `source` (admission refuses the name too).
    df.createOrReplaceTempView(SOURCE_VIEW)
    try:
        return spark.sql(wrap_query(sql))
    except ParseException as exc:
        raise EtlError(INVALID_SQL, classify(exc, "spec.transform.sql").message) from exc
    except AnalysisException as exc:
        err = classify(exc, "spec.transform.sql")
        reason = SCHEMA_MISMATCH if err.reason == SCHEMA_MISMATCH else INVALID_SQL
        message = err.message
        if reason == SCHEMA_MISMATCH:
            message += f" (columns of `source`: {', '.join(df.columns)})"
        raise EtlError(reason, message) from exc


def dedupe(df: DataFrame, keys: Sequence[str]) -> DataFrame:
    """Drop duplicate rows deterministically: among rows sharing `keys`, keep the smallest by the
    remaining columns (Spark's dropDuplicates keeps an arbitrary one, which would make the
    content digest differ between runs)."""
    from pyspark.sql import functions as sf

    if not keys:
        return df.distinct()
    rest = [c for c in df.columns if c not in keys]
    if not rest:
        return df.distinct()
    kept = df.groupBy(*keys).agg(sf.min(sf.struct(*rest)).alias("_kept"))
    columns = {c: sf.col(c) for c in keys} | {c: sf.col(f"_kept.{c}") for c in rest}
    return kept.select(*[columns[c].alias(c) for c in df.columns])


def apply_transform(
    spark: SparkSession,
    df: DataFrame,
    transform: Transform | None,
    inputs: Mapping[str, DataFrame] | None = None,
) -> DataFrame:
    """`inputs`: the DataFrames of spec.transform.inputs, by view name."""
    from pyspark.sql import functions as sf

    if transform is None:
        return df
    if transform.sql:
        df = run_sql(spark, df, transform.sql, inputs)
    if transform.renames:
        require_columns("spec.transform.renames", list(transform.renames), df.columns)
        kept = [c for c in df.columns if c not in transform.renames]
        for old, new in transform.renames.items():
            if new in kept:
                raise EtlError(
                    SCHEMA_MISMATCH,
                    f"spec.transform.renames.{old}: {new!r} is already a column of the source",
                )
        df = df.withColumnsRenamed(dict(transform.renames))
    if transform.casts:
        require_columns("spec.transform.casts", list(transform.casts), df.columns)
        # try_cast: a value that does not convert becomes null, for notNull rules to catch,
        # instead of failing the whole run on one bad cell.
        df = df.withColumns({c: sf.col(c).try_cast(t) for c, t in transform.casts.items()})
    if transform.dedupe is not None:
        require_columns("spec.transform.dedupe.keys", transform.dedupe.keys, df.columns)
        df = dedupe(df, transform.dedupe.keys)
    return df
