"""Why an ETL run failed, as a CamelCase reason (the status contract) plus a message for people.

Everything that goes wrong in a run ends as an `EtlError`: raised directly where the pipeline
knows what is wrong (a missing column, a missing salt), or classified from the engine's exception
by `classify` (Spark reports error conditions such as PATH_NOT_FOUND in a stable form)."""

from __future__ import annotations

import re

SOURCE_NOT_FOUND = "SourceNotFound"
SOURCE_UNREADABLE = "SourceUnreadable"
UPSTREAM_NOT_FOUND = "UpstreamNotFound"
SCHEMA_MISMATCH = "SchemaMismatch"
INVALID_SQL = "InvalidSql"
# spec.transform.sql reads outside the view `source` (workloads/etl/sql_surface.py).
SQL_NOT_PERMITTED = "SqlNotPermitted"
INVALID_EXPECTATION = "InvalidExpectation"
QUALITY_GATE_FAILED = "QualityGateFailed"
ALL_ROWS_QUARANTINED = "AllRowsQuarantined"
MISSING_SALT = "MissingSalt"
INVALID_SPEC = "InvalidSpec"
SPARK_UNAVAILABLE = "SparkUnavailable"
WRITE_FAILED = "WriteFailed"
ETL_FAILED = "EtlFailed"


class EtlError(Exception):
    """A run failure with its CamelCase reason."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


def missing_column(field: str, column: str, available: list[str]) -> EtlError:
    return EtlError(
        SCHEMA_MISMATCH,
        f"{field}: column {column!r} does not exist; available columns: {', '.join(available)}",
    )


# Spark error conditions (the `[CONDITION]` prefix of its messages) and what they mean here.
_CONDITIONS: tuple[tuple[str, str], ...] = (
    (r"PATH_NOT_FOUND|FileNotFoundException|NoSuchKey", SOURCE_NOT_FOUND),
    (
        r"MALFORMED_RECORD|FAILED_READ_FILE|CANNOT_READ_FILE_FOOTER|not a Parquet file"
        r"|CORRUPTED_|UNABLE_TO_INFER_SCHEMA|MALFORMED_",
        SOURCE_UNREADABLE,
    ),
    (r"UNRESOLVED_COLUMN|UNRESOLVED_FIELD|FIELD_NOT_FOUND", SCHEMA_MISMATCH),
    (
        r"DELTA_FAILED_TO_MERGE_FIELDS|DELTA_.*SCHEMA_MISMATCH|_LEGACY_ERROR_TEMP_DELTA",
        SCHEMA_MISMATCH,
    ),
    (r"PARSE_SYNTAX_ERROR|PARSE_|UNRESOLVED_ROUTINE|DATATYPE_MISMATCH", INVALID_SQL),
)


def _first_line(text: str, limit: int = 2000) -> str:
    """The informative line of an engine message: the one naming a Spark error condition
    (`[PATH_NOT_FOUND] ...`) if any (a Py4J error starts with "An error occurred while
    calling o94.parquet"), else the first line; without the JVM class prefix."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    tagged = [ln for ln in lines if re.search(r"\[[A-Z][A-Z0-9_.]+\]", ln)]
    line = (tagged or lines or [text])[0]
    line = re.sub(r"^(: )?([a-z]+\.)+[A-Za-z]+(Exception|Error): ", "", line)
    return line[:limit]


def classify(exc: BaseException, context: str = "") -> EtlError:
    """The EtlError an engine exception stands for (ETL_FAILED when nothing more specific)."""
    if isinstance(exc, EtlError):
        return exc
    text = str(exc)
    condition = ""
    get_condition = getattr(exc, "getCondition", None)
    if callable(get_condition):
        condition = str(get_condition() or "")
    haystack = f"{condition} {text}"
    reason = ETL_FAILED
    for pattern, candidate in _CONDITIONS:
        if re.search(pattern, haystack):
            reason = candidate
            break
    prefix = f"{context}: " if context else ""
    return EtlError(reason, prefix + _first_line(text))
