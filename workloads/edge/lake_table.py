"""Edge inference logs as a Delta table per EdgeDeployment.

The agents only append: each sealed JSONL segment is uploaded under
`inference-logs/<ns>/<deployment>/<node>/<node>-<buffer>-<seq>.jsonl` (a name never reused, the
same content when re-uploaded after a crash). `ingest` turns the segments not yet in the table
into rows of `edge-logs/<ns>/<deployment>` (Delta, partitioned by site, node and day) in one
commit. Why not let every agent write Delta itself: hundreds of nodes that come back online at
once would all commit to one log and retry on each other's conflicts, each needs delta-rs and a
commit-safe object store, and a node that crashed after a commit but before deleting its segment
would append the rows again. Appending whole immutable files is what an offline node can always
do; the single ingest step makes it exactly-once:

- a segment whose name is already in the table (column `source_file`) is skipped unread;
- the rows of new segments are MERGEd on (site, node, day, id), inserting only unmatched ids, so a
  segment read by two ingests at once (or re-uploaded under a new name) still adds no duplicate;
  two concurrent merges touching the same partitions conflict in Delta's commit and the loser
  retries against the new version.

Hard examples: the agent flags a classification whose highest class probability is below
`spec.logging.hardExampleThreshold` at prediction time (`hard_example_flag`); the flag and the
threshold in force travel with the record. Regression outputs have no confidence and are never
flagged (`confidence` and `hard_example` are null).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neuraxis.lake import Lake

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

PARTITION_COLUMNS = ("site", "node", "day")
UNKNOWN_SITE = "unknown"
FEATURES = "features"  # map<string, double>: the Dataset source flattens it into columns
MERGE_ATTEMPTS = 5


def site_of(node: str, given: str | None, env_site: str | None, node_sites: Path | None) -> str:
    """The agent's site: `--site`, else the one-site env var, else its node in the map the
    operator mounts (read once at start: a node that joined after the last reconcile logs
    `unknown` until its agent restarts), else `unknown`."""
    if given or env_site:
        return str(given or env_site)
    if node_sites is not None:
        try:
            mapping = json.loads(node_sites.read_text())
        except (OSError, ValueError) as exc:
            log.warning("node-site map %s unreadable (%s): site %s", node_sites, exc, UNKNOWN_SITE)
            return UNKNOWN_SITE
        if isinstance(mapping, dict) and isinstance(mapping.get(node), str):
            return str(mapping[node])
    return UNKNOWN_SITE


def confidence_of(output: Any) -> float | None:
    """The highest class probability of a classification output; None for anything else."""
    if isinstance(output, list) and output and all(isinstance(p, int | float) for p in output):
        return float(max(output))
    return None


def hard_example_flag(confidence: float | None, threshold: float | None) -> bool | None:
    """True below the threshold; None when there is no threshold or no confidence (regression)."""
    if threshold is None or confidence is None:
        return None
    return confidence < threshold


@dataclass(frozen=True)
class LakeFields:
    """What the agent adds to each log record for the table: where it ran and the threshold
    of the EdgeDeployment's spec.logging (both fixed for the agent's lifetime)."""

    site: str
    node: str
    hard_example_threshold: float | None = None

    def for_row(
        self, feature_names: Sequence[str], row: Sequence[float], output: Any
    ) -> dict[str, Any]:
        confidence = confidence_of(output)
        return {
            "site": self.site,
            "node": self.node,
            FEATURES: dict(zip(feature_names, row, strict=True)),
            "confidence": confidence,
            "hard_example": hard_example_flag(confidence, self.hard_example_threshold),
            "hard_example_threshold": self.hard_example_threshold,
        }


def arrow_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            ("id", pa.string()),
            ("ts", pa.timestamp("us", tz="UTC")),
            ("site", pa.string()),
            ("node", pa.string()),
            ("day", pa.date32()),
            ("model", pa.string()),
            ("model_version", pa.string()),
            ("digest", pa.string()),
            (FEATURES, pa.map_(pa.string(), pa.float64())),
            ("prediction", pa.string()),
            ("probabilities", pa.list_(pa.float64())),
            ("value", pa.float64()),
            ("confidence", pa.float64()),
            ("hard_example", pa.bool_()),
            ("hard_example_threshold", pa.float64()),
            ("source_file", pa.string()),
        ]
    )


class RecordError(ValueError):
    """A log record that cannot become a row; the message names the field."""


def _timestamp(value: Any) -> datetime:
    if not isinstance(value, str):
        raise RecordError(f"ts: expected an ISO 8601 string, got {value!r}")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise RecordError(f"ts: {value!r} is not ISO 8601") from exc
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def record_to_row(record: dict[str, Any], node: str, source_file: str) -> dict[str, Any]:
    """One table row from one agent record (pure). `node` comes from the upload path when the
    record predates the field; the site from the record, else `unknown`."""
    for key in ("id", "ts", "model"):
        if key not in record:
            raise RecordError(f"{key}: missing")
    ts = _timestamp(record["ts"])
    output = record.get("output")
    confidence = confidence_of(output)
    features = record.get(FEATURES) or {}
    if not isinstance(features, dict):
        raise RecordError(f"{FEATURES}: expected an object of feature name to value")
    threshold = record.get("hard_example_threshold")
    flag = record.get("hard_example")
    if flag is None:  # records written before the agent flagged them
        flag = hard_example_flag(confidence, threshold)
    value = float(output) if isinstance(output, int | float) else None
    return {
        "id": str(record["id"]),
        "ts": ts,
        "site": str(record.get("site") or UNKNOWN_SITE),
        "node": str(record.get("node") or node),
        "day": ts.date(),
        "model": str(record["model"]),
        "model_version": _text(record.get("model_version")),
        "digest": record.get("bundle_digest"),
        FEATURES: [(str(k), float(v)) for k, v in sorted(features.items())],
        "prediction": _text(record.get("prediction")),
        "probabilities": (
            [float(p) for p in output]
            if confidence is not None and isinstance(output, list)
            else None
        ),
        "value": value,
        "confidence": confidence,
        "hard_example": flag,
        "hard_example_threshold": None if threshold is None else float(threshold),
        "source_file": source_file,
    }


def segment_rows(data: bytes, node: str, source_file: str) -> list[dict[str, Any]]:
    """The rows of one uploaded JSONL segment (a torn last line cannot occur: only sealed,
    whole files are uploaded; a blank line is skipped)."""
    rows = []
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise RecordError(f"{source_file}:{number}: not JSON ({exc})") from exc
        try:
            rows.append(record_to_row(record, node, source_file))
        except RecordError as exc:
            raise RecordError(f"{source_file}:{number}: {exc}") from exc
    return rows


@dataclass(frozen=True)
class IngestResult:
    table_uri: str
    version: int | None  # None: no table yet (nothing was ever uploaded)
    segments: int  # new segments read by this ingest
    rows_inserted: int


def _segments(lake: Lake, raw_prefix: str) -> list[tuple[str, str]]:
    """(relative path, node) of every uploaded segment, sorted."""
    out = []
    for rel in lake.list_files(raw_prefix):
        parts = rel[len(raw_prefix) :].strip("/").split("/")
        if len(parts) == 2 and parts[1].endswith(".jsonl") and not parts[1].startswith("."):
            out.append((rel, parts[0]))
    return out


def unique_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first row of each (site, node, day, id): a MERGE inserts every unmatched source row,
    so the same record in two new segments of one ingest must be dropped here."""
    seen: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        seen.setdefault(tuple(row[k] for k in (*PARTITION_COLUMNS, "id")), row)
    return list(seen.values())


def _ingested_files(table: Any) -> set[str]:
    column = table.to_pyarrow_table(columns=["source_file"]).column("source_file")
    return {str(v) for v in column.unique().to_pylist()}


def _merge_predicate() -> str:
    keys = [*PARTITION_COLUMNS, "id"]
    return " AND ".join(f"t.{k} = s.{k}" for k in keys)


def ingest(lake: Lake, namespace: str, deployment: str) -> IngestResult:
    """Bring every uploaded segment not yet in the table into it (one commit); idempotent."""
    import pyarrow as pa
    from deltalake import DeltaTable, write_deltalake
    from deltalake.exceptions import TableNotFoundError

    table_rel = Lake.edge_logs_table_path(namespace, deployment)
    table_uri = lake.uri(table_rel)
    opts = lake.storage_options()
    raw_prefix = Lake.inference_logs_path(namespace, deployment)
    segments = _segments(lake, raw_prefix)
    for attempt in range(1, MERGE_ATTEMPTS + 1):
        try:
            table: Any = DeltaTable(table_uri, storage_options=opts)
        except TableNotFoundError:
            table = None
        done = _ingested_files(table) if table is not None else set()
        new = [(rel, node) for rel, node in segments if rel not in done]
        if not new:
            version = table.version() if table is not None else None
            return IngestResult(table_uri, version, 0, 0)
        rows = [r for rel, node in new for r in segment_rows(lake.read_bytes(rel), node, rel)]
        data = pa.Table.from_pylist(unique_rows(rows), schema=arrow_schema())
        try:
            if table is None:
                # mode error: a concurrent first ingest makes one of the two fail and retry
                write_deltalake(
                    table_uri,
                    data,
                    partition_by=list(PARTITION_COLUMNS),
                    mode="error",
                    storage_options=opts,
                )
                inserted = data.num_rows
            else:
                metrics = (
                    table.merge(data, _merge_predicate(), source_alias="s", target_alias="t")
                    .when_not_matched_insert_all()
                    .execute()
                )
                inserted = int(metrics.get("num_target_rows_inserted", 0))
        except Exception as exc:
            if attempt == MERGE_ATTEMPTS or not _is_conflict(exc):
                raise
            log.info("edge-log ingest conflicted (%s); retrying (%d)", exc, attempt)
            time.sleep(0.1 * attempt)
            continue
        version = DeltaTable(table_uri, storage_options=opts).version()
        return IngestResult(table_uri, version, len(new), inserted)
    raise AssertionError("unreachable")


def _is_conflict(exc: BaseException) -> bool:
    """A concurrent writer won the commit (retry), as opposed to a real failure."""
    from deltalake.exceptions import CommitFailedError

    text = str(exc).lower()
    return isinstance(exc, CommitFailedError) or "already exists" in text or "conflict" in text


def read_rows(table_uri: str, lake: Lake, columns: Sequence[str] | None = None) -> list[Any]:
    """Every row of the table (tests and small tools; the ETL reads it with Spark)."""
    from deltalake import DeltaTable

    table = DeltaTable(table_uri, storage_options=lake.storage_options())
    rows: list[Any] = table.to_pyarrow_table(columns=list(columns) if columns else None).to_pylist()
    return rows
