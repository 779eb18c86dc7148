"""Dataset: a versioned lake table produced by a Spark pipeline with quality gates and masking."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field

from neuraxis.crds.common import (
    IDENTIFIER_PATTERN,
    ApiModel,
    Artifact,
    Column,
    DatasetRef,
    Lineage,
    ObjectMeta,
    ObjectRef,
    Rule,
    SecretKeyRef,
    StatusBase,
    cron_rules,
    exactly_one,
    is_set,
    ordered_bounds_rule,
)

SourceFormat = Literal["csv", "json", "parquet", "delta"]
SparkType = Literal["string", "int", "long", "double", "float", "boolean", "date", "timestamp"]
URI_PATTERN = r"^(file|s3|s3a|gs)://[^\s]+$"


class DatasetFrom(ApiModel):
    """Derive this dataset from another Dataset's table, or from an EdgeDeployment's inference
    logs (the Delta table its agents' uploads are ingested into). Exactly one of the two."""

    dataset_ref: DatasetRef | None = Field(
        default=None, description="The upstream Dataset (and optional version)."
    )
    edge_deployment_ref: ObjectRef | None = Field(
        default=None,
        description=(
            "Read the inference logs of this EdgeDeployment: one row per prediction with its "
            "site, node, day, model version, feature columns, prediction and confidence."
        ),
    )
    hard_examples_only: bool = Field(
        default=False,
        description="Only the predictions flagged hard_example (edgeDeploymentRef only).",
    )

    rules = (
        Rule(
            cel="has(self.datasetRef) != has(self.edgeDeploymentRef)",
            message="exactly one of datasetRef or edgeDeploymentRef must be set",
            check=lambda f: exactly_one(f.dataset_ref, f.edge_deployment_ref),
        ),
        Rule(
            cel=(
                "!has(self.hardExamplesOnly) || !self.hardExamplesOnly"
                " || has(self.edgeDeploymentRef)"
            ),
            message="hardExamplesOnly needs edgeDeploymentRef",
            check=lambda f: not f.hard_examples_only or f.edge_deployment_ref is not None,
            field=".hardExamplesOnly",
        ),
    )


class BuiltinSource(ApiModel):
    """Data that needs no network: a seeded generator or a data set shipped inside a package."""

    name: Literal["sensors", "breast-cancer"] = Field(
        description=(
            "sensors: synthetic machine sensor readings with operator e-mails (seeded); "
            "breast-cancer: the Wisconsin diagnostic data set bundled with scikit-learn."
        )
    )
    rows: int = Field(default=5000, ge=1, le=100_000_000, description="Rows to generate (sensors).")
    seed: int = Field(default=7, ge=0, description="Generator seed, for reproducible data.")


class DataSource(ApiModel):
    """Where the raw data comes from. Exactly one of uri, from or builtin."""

    uri: str | None = Field(
        default=None,
        max_length=2048,
        pattern=URI_PATTERN,
        description="file://, s3://, s3a:// or gs:// location of the raw data.",
    )
    format: SourceFormat | None = Field(default=None, description="Format of the data at uri.")
    options: dict[str, str] = Field(
        default_factory=dict,
        max_length=32,
        description="Spark reader options, e.g. header: 'true' for CSV.",
    )
    from_: DatasetFrom | None = Field(
        default=None, alias="from", description="Read another Dataset's table instead of raw files."
    )
    builtin: BuiltinSource | None = Field(default=None, description="Packaged or generated data.")

    rules = (
        Rule(
            cel="[has(self.uri), has(self.from), has(self.builtin)].filter(x, x).size() == 1",
            message="exactly one of uri, from or builtin must be set",
            check=lambda s: exactly_one(s.uri, s.from_, s.builtin),
        ),
        Rule(
            cel="!has(self.uri) || has(self.format)",
            message="format is required when uri is set",
            check=lambda s: s.uri is None or s.format is not None,
            field=".format",
        ),
    )


class Dedupe(ApiModel):
    """Drop duplicate rows."""

    keys: list[Column] = Field(
        default_factory=list,
        max_length=64,
        description="Columns that identify a row; empty means all columns.",
    )


# The closed SQL surface of spec.transform.sql: a query may read the view `source` and the CTEs
# it defines, nothing else. The ETL checks this with Spark's own parser before reading anything
# (workloads/etl/sql_surface.py, the authority); admission refuses the obvious cases below with
# the same words, so a spec that reads another namespace's table is not even stored. The
# patterns are RE2 and Python `re` alike. A path relation is `<format>.\`<path>\``; not preceded
# by `.` or a word character, so `source.json.\`a b\`` (a struct field) still passes.
SQL_SOURCE_VIEW = "source"
SQL_PATH_FORMATS = ("delta", "parquet", "csv", "json", "text", "orc", "avro", "binaryfile", "xml")
SQL_PATH_RELATION = r"(?i)(^|[^.\w`])(" + "|".join(SQL_PATH_FORMATS) + r")\s*\.\s*`"
SQL_CATALOGS = ("spark_catalog", "global_temp")
SQL_CATALOG_ACCESS = r"(?i)(^|[^.\w`])(" + "|".join(SQL_CATALOGS) + r")\s*\."
# read_files reads any path; reflect, java_method and try_reflect call any JVM method.
SQL_REFUSED_FUNCTIONS = ("read_files", "reflect", "java_method", "try_reflect")
SQL_REFUSED_CALL = r"(?i)(^|[^.\w`])(" + "|".join(SQL_REFUSED_FUNCTIONS) + r")\s*\("
SQL_ONLY_SOURCE = (
    "may read only the view `source`, the views of spec.transform.inputs and the CTEs it defines"
)
SQL_PATH_MESSAGE = (
    f"sql {SQL_ONLY_SOURCE}: a path-based relation (delta.`...`, parquet.`...`) is refused"
)
SQL_CATALOG_MESSAGE = (
    f"sql {SQL_ONLY_SOURCE}: catalog tables (spark_catalog.*, global_temp.*) are refused"
)
SQL_FUNCTION_MESSAGE = (
    f"sql {SQL_ONLY_SOURCE}: read_files, reflect, java_method and try_reflect are refused "
    "(they read files or call the JVM)"
)


def _cel_string(pattern: str) -> str:
    """`pattern` as the body of a single-quoted CEL string literal."""
    return pattern.replace("\\", "\\\\").replace("'", "\\'")


def _sql_rule(pattern: str, message: str) -> Rule:
    compiled = re.compile(pattern)
    return Rule(
        cel=f"!has(self.sql) || !self.sql.matches('{_cel_string(pattern)}')",
        message=message,
        check=lambda t: t.sql is None or compiled.search(t.sql) is None,
        field=".sql",
    )


# A transform input: a URI as for spec.source.uri, or a path relative to the folder `neuraxis run`
# starts in (a pod's working directory in a cluster, where it reaches no one's lake data).
INPUT_URI_PATTERN = r"^((file|s3|s3a|gs)://[^\s]+|[^/\s:][^\s:]*)$"
PARENT_SEGMENT = r"(^|/)\.\.(/|$)"


class TransformInput(ApiModel):
    """A file the transform's SQL reads as a view of its own name, next to `source`: the one
    way for a transform to read more than its source (the SQL itself reads no paths)."""

    name: str = Field(
        max_length=128, pattern=IDENTIFIER_PATTERN, description="The view's name in the SQL."
    )
    uri: str = Field(
        max_length=2048,
        pattern=INPUT_URI_PATTERN,
        description=(
            "file://, s3://, s3a:// or gs:// location, or a path relative to the working "
            "directory. Under another namespace's part of the lake it needs that namespace's "
            "grant, as spec.source.uri does."
        ),
    )
    format: SourceFormat = Field(description="Format of the data at uri.")
    options: dict[str, str] = Field(
        default_factory=dict, max_length=32, description="Spark reader options."
    )

    rules = (
        Rule(
            cel=f"!self.uri.matches('{_cel_string(PARENT_SEGMENT)}')",
            message="uri: a `..` segment is refused (a relative path stays below its folder)",
            check=lambda i: re.search(PARENT_SEGMENT, i.uri) is None,
            field=".uri",
        ),
    )


class Transform(ApiModel):
    """Reshape the source before quality checks: SQL, then renames, casts and dedupe."""

    sql: str | None = Field(
        default=None,
        max_length=65536,
        description=(
            "Spark SQL over the temporary view `source`, e.g. SELECT * FROM source. One query "
            "that reads only `source` and the CTEs it defines: path-based relations "
            "(delta.`...`), catalog tables, read_files and JVM calls (reflect, java_method) "
            "are refused, as are commands (SET, ADD JAR) and DDL or DML."
        ),
    )
    inputs: list[TransformInput] = Field(
        default_factory=list,
        max_length=8,
        description="Declared files the SQL may read as views, besides `source`.",
    )
    renames: dict[str, str] = Field(
        default_factory=dict, max_length=256, description="Old column name to new column name."
    )
    casts: dict[str, SparkType] = Field(
        default_factory=dict, max_length=256, description="Column name to Spark type."
    )
    dedupe: Dedupe | None = Field(default=None, description="Drop duplicate rows.")

    rules = (
        _sql_rule(SQL_PATH_RELATION, SQL_PATH_MESSAGE),
        _sql_rule(SQL_CATALOG_ACCESS, SQL_CATALOG_MESSAGE),
        _sql_rule(SQL_REFUSED_CALL, SQL_FUNCTION_MESSAGE),
        Rule(
            cel="!has(self.inputs) || self.inputs.all(i, i.name.lowerAscii() != 'source')",
            message="inputs: an input may not be named source (the view of spec.source)",
            check=lambda t: all(i.name.lower() != SQL_SOURCE_VIEW for i in t.inputs),
            field=".inputs",
        ),
        Rule(
            cel=(
                "!has(self.inputs) || self.inputs.all(a, "
                "self.inputs.exists_one(b, b.name.lowerAscii() == a.name.lowerAscii()))"
            ),
            message="inputs: names must be unique (Spark compares them ignoring case)",
            check=lambda t: len({i.name.lower() for i in t.inputs}) == len(t.inputs),
            field=".inputs",
        ),
        Rule(
            cel="!has(self.inputs) || size(self.inputs) == 0 || has(self.sql)",
            message="inputs are read only by sql: set sql",
            check=lambda t: not t.inputs or t.sql is not None,
            field=".inputs",
        ),
    )


class Expectation(ApiModel):
    """One data-quality rule, checked on every run."""

    rule: Literal[
        "notNull", "unique", "range", "regex", "allowedValues", "rowCount", "freshness"
    ] = Field(description="What to check.")
    column: str | None = Field(
        default=None, max_length=128, pattern=IDENTIFIER_PATTERN, description="The column checked."
    )
    columns: list[Column] | None = Field(
        default=None,
        min_length=2,
        max_length=16,
        description="Columns that must be unique together (rule unique).",
    )
    min: float | None = Field(default=None, description="Lower bound (range, rowCount).")
    max: float | None = Field(default=None, description="Upper bound (range, rowCount).")
    pattern: str | None = Field(
        default=None, max_length=1024, description="Java regular expression every value matches."
    )
    values: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="Allowed values, compared as strings (rule allowedValues).",
    )
    max_age_seconds: int | None = Field(
        default=None,
        ge=1,
        description="Newest value of a timestamp column may be at most this old.",
    )

    rules = (
        Rule(
            cel="self.rule in ['rowCount', 'unique'] || has(self.column)",
            message="column is required for this rule",
            check=lambda e: e.rule in ("rowCount", "unique") or e.column is not None,
            field=".column",
        ),
        Rule(
            cel="self.rule != 'unique' || has(self.column) != has(self.columns)",
            message="unique needs exactly one of column or columns",
            check=lambda e: e.rule != "unique" or (e.column is None) != (e.columns is None),
        ),
        Rule(
            cel="!(self.rule in ['range', 'rowCount']) || has(self.min) || has(self.max)",
            message="range and rowCount need min or max",
            check=lambda e: e.rule not in ("range", "rowCount") or is_set(e.min) or is_set(e.max),
        ),
        ordered_bounds_rule(),
        Rule(
            cel="self.rule != 'regex' || has(self.pattern)",
            message="regex needs pattern",
            check=lambda e: e.rule != "regex" or e.pattern is not None,
            field=".pattern",
        ),
        Rule(
            cel="self.rule != 'allowedValues' || has(self.values)",
            message="allowedValues needs values",
            check=lambda e: e.rule != "allowedValues" or e.values is not None,
            field=".values",
        ),
        Rule(
            cel="self.rule != 'freshness' || has(self.maxAgeSeconds)",
            message="freshness needs maxAgeSeconds",
            check=lambda e: e.rule != "freshness" or e.max_age_seconds is not None,
            field=".maxAgeSeconds",
        ),
    )


class Quality(ApiModel):
    """Data-quality gate: expectations and what to do with rows or runs that fail them."""

    expectations: list[Expectation] = Field(
        min_length=1, max_length=128, description="Rules every run checks."
    )
    on_failure: Literal["Fail", "Warn", "Quarantine"] = Field(
        default="Fail",
        description=(
            "Fail: the run fails and no version is written; Warn: write and record the failure "
            "(TrainingJobs still wait); Quarantine: move failing rows to the quarantine table."
        ),
    )


class MaskedColumn(ApiModel):
    """How one PII column is masked before anything is written."""

    column: str = Field(max_length=128, pattern=IDENTIFIER_PATTERN, description="Column to mask.")
    method: Literal["hash", "redact", "truncate", "generalize"] = Field(
        description=(
            "hash: salted SHA-256 (hex); redact: replaced by a fixed marker; truncate: keep the "
            "first `length` characters; generalize: cut a date or timestamp to `granularity`."
        )
    )
    length: int | None = Field(
        default=None, ge=0, le=1024, description="Characters kept (truncate)."
    )
    granularity: Literal["year", "month", "day", "hour"] | None = Field(
        default=None, description="Precision kept (generalize)."
    )
    tags: list[str] = Field(
        default_factory=list,
        max_length=16,
        description="PII tags recorded in the schema metadata, e.g. email, person, location.",
    )

    rules = (
        Rule(
            cel="self.method != 'truncate' || has(self.length)",
            message="truncate needs length",
            check=lambda m: m.method != "truncate" or m.length is not None,
            field=".length",
        ),
        Rule(
            cel="self.method != 'generalize' || has(self.granularity)",
            message="generalize needs granularity",
            check=lambda m: m.method != "generalize" or m.granularity is not None,
            field=".granularity",
        ),
    )


class Privacy(ApiModel):
    """Column masking applied before quality checks write anything."""

    columns: list[MaskedColumn] = Field(
        min_length=1, max_length=256, description="Columns to mask."
    )
    salt_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key holding the hash salt. Required when any column is hashed.",
    )

    rules = (
        Rule(
            cel="!self.columns.exists(c, c.method == 'hash') || has(self.saltSecretRef)",
            message="saltSecretRef is required when a column uses method hash",
            check=lambda p: (
                not any(c.method == "hash" for c in p.columns) or p.salt_secret_ref is not None
            ),
            field=".saltSecretRef",
        ),
    )


class Output(ApiModel):
    """The versioned lake table the dataset is written to."""

    table: str | None = Field(
        default=None,
        max_length=128,
        pattern=IDENTIFIER_PATTERN,
        description="Table name under tables/<namespace>/; defaults to the Dataset name.",
    )
    format: Literal["delta"] = Field(default="delta", description="Table format (Delta Lake).")
    partition_by: list[Column] = Field(
        default_factory=list, max_length=8, description="Partition columns."
    )
    mode: Literal["overwrite", "append"] = Field(
        default="overwrite",
        description="Replace the table's content or append to it (new version).",
    )


class Engine(ApiModel):
    """Where Spark runs."""

    executors: int = Field(
        default=0,
        ge=0,
        le=1000,
        description="0: Spark local mode inside the pod; >0: Spark on Kubernetes.",
    )
    executor_cores: int = Field(default=1, ge=1, le=64, description="Cores per executor.")
    executor_memory: str = Field(
        default="2g",
        pattern=r"^[0-9]+[kmgt]$",
        description="Memory per executor (Spark syntax, e.g. 4g).",
    )
    executor_cpu_request: str | None = Field(
        default=None,
        max_length=16,
        pattern=r"^([0-9]+m|[0-9]+(\.[0-9]{1,3})?)$",
        description=(
            "CPU each executor pod requests (Kubernetes quantity, e.g. 250m); default: "
            "executorCores. The executor still runs executorCores tasks at once and may use up "
            "to executorCores CPUs: a smaller request lets executors share a small node."
        ),
    )
    driver_memory: str = Field(
        default="1g", pattern=r"^[0-9]+[kmgt]$", description="Driver memory (Spark syntax)."
    )


class DatasetSpec(ApiModel):
    """Desired state of a Dataset: source, transform, quality gate, masking and output table."""

    source: DataSource = Field(description="Where the raw data comes from.")
    transform: Transform | None = Field(
        default=None, description="Reshaping before quality checks."
    )
    quality: Quality | None = Field(default=None, description="Data-quality gate.")
    privacy: Privacy | None = Field(default=None, description="PII masking.")
    output: Output = Field(default_factory=Output, description="The versioned output table.")
    schedule: str | None = Field(
        default=None,
        max_length=128,
        description=(
            "Cron schedule (5 fields or @daily etc., as a Kubernetes CronJob reads it); "
            "unset runs once per spec change."
        ),
    )
    engine: Engine = Field(default_factory=Engine, description="Spark placement.")

    rules = cron_rules("schedule", "schedule")


class ColumnSchema(ApiModel):
    """One column of the written table."""

    name: str = Field(max_length=256, description="Column name.")
    type: str = Field(max_length=256, description="Spark SQL type, e.g. double, string.")
    pii: list[str] = Field(
        default_factory=list,
        max_length=16,
        description="PII tags (spec.privacy tags of a masked column, kept in the Delta metadata).",
    )


class QualityResult(ApiModel):
    """Outcome of one expectation on the last run."""

    rule: str = Field(max_length=64, description="The expectation's rule, e.g. notNull.")
    column: str | None = Field(
        default=None, max_length=1024, description="Its column (columns joined by commas)."
    )
    passed: bool = Field(description="Whether the expectation held.")
    failed_rows: int = Field(default=0, ge=0, description="Rows that broke it.")
    observed: str | None = Field(default=None, max_length=1024, description="Observed value.")


class DatasetInput(ApiModel):
    """One input the last run read: a raw source or an upstream Dataset's table version."""

    uri: str = Field(max_length=2048, description="Where it was read (builtin:// for built-ins).")
    dataset: str | None = Field(
        default=None, max_length=253, description="The upstream Dataset (spec.source.from)."
    )
    version: int | None = Field(default=None, ge=0, description="The table version read.")
    digest: str | None = Field(
        default=None,
        max_length=128,
        description="Content digest recorded in that version's commit (upstream Datasets).",
    )
    edge_deployment: str | None = Field(
        default=None,
        max_length=253,
        description="The EdgeDeployment whose inference-log table was read (spec.source.from).",
    )


class DatasetLineage(Lineage):
    """This Dataset's version and digest, the inputs it was built from, and the raw sources at
    the root of the chain."""

    inputs: list[DatasetInput] = Field(
        default_factory=list, max_length=16, description="What the last run read."
    )


class StatusTruncation(ApiModel):
    """The status lists were cut to fit the workload's 4 KiB termination message (each keeps its
    first entries): the full counts, and the run's full result."""

    columns: int = Field(ge=0, description="Columns in the table (status.schema lists a prefix).")
    expectations: int = Field(ge=0, description="Expectations judged (status.quality: a prefix).")
    inputs: int = Field(ge=0, description="Inputs read (status.lineage.inputs: a prefix).")
    result_uri: str | None = Field(
        default=None, max_length=2048, description="The run's result.json with every entry."
    )


class DatasetStatus(StatusBase):
    """Observed state of a Dataset."""

    phase: Literal["Pending", "Running", "Ready", "Failed"] = Field(
        default="Pending", description="Pending, Running, Ready or Failed."
    )
    version: int | None = Field(default=None, ge=0, description="Latest table version written.")
    rows: int | None = Field(default=None, ge=0, description="Rows in that version.")
    quarantined_rows: int | None = Field(default=None, ge=0, description="Rows sent to quarantine.")
    quality_passed: bool | None = Field(default=None, description="Whether every expectation held.")
    quality: list[QualityResult] = Field(
        default_factory=list, max_length=128, description="Each expectation's result, in order."
    )
    table_schema: list[ColumnSchema] = Field(
        default_factory=list,
        max_length=1024,
        alias="schema",
        description="The table's columns: name, type, PII tags.",
    )
    table: Artifact | None = Field(
        default=None,
        description="The table location and the content digest recorded in the version's commit.",
    )
    lineage: DatasetLineage | None = Field(
        default=None, description="This version, its digest, its inputs and raw sources."
    )
    truncated: StatusTruncation | None = Field(
        default=None, description="Set when schema, quality or inputs list only a prefix."
    )
    last_run_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})


class Dataset(ApiModel):
    """A versioned lake table produced from raw data by a Spark pipeline with a quality gate and
    PII masking. Every successful run writes a new Delta version."""

    api_version: Literal["neuraxis.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["Dataset"]
    metadata: ObjectMeta
    spec: DatasetSpec
    status: DatasetStatus | None = None
