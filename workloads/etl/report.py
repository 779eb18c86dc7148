"""The outcome of one ETL run, in the shapes its readers want: the full result JSON (fields named
and typed like DatasetStatus, so the operator copies them into status) and the compact
termination message."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from neuraxis.crds.common import Artifact
from neuraxis.crds.dataset import ColumnSchema, DatasetInput, DatasetLineage, QualityResult
from neuraxis.workloads.result import TERMINATION_MESSAGE_LIMIT

Outcome = Literal["Succeeded", "Failed"]
# Bytes of the termination message left for `resultUri`, which publish_result adds.
RESULT_URI_RESERVE = 640
# ... and for the `truncated` counts (three integers of at most 7 digits, with their keys).
TRUNCATION_HINT_RESERVE = 96


@dataclass(frozen=True)
class EtlResult:
    outcome: Outcome
    reason: str
    message: str
    dataset: str
    namespace: str
    run_id: str
    table_name: str
    table_uri: str
    started_at: str
    finished_at: str
    version: int | None = None
    rows: int | None = None
    quarantined_rows: int | None = None
    quality_passed: bool | None = None
    quality: tuple[QualityResult, ...] = ()
    schema: tuple[ColumnSchema, ...] = ()
    digest: str | None = None
    quarantine_uri: str | None = None
    quarantine_version: int | None = None
    input_uri: str | None = None
    input_version: int | None = None
    input_dataset: str | None = None
    input_digest: str | None = None
    input_edge_deployment: str | None = None
    sources: tuple[str, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def succeeded(self) -> bool:
        return self.outcome == "Succeeded"

    def inputs(self) -> list[DatasetInput]:
        if self.input_uri is None:
            return []
        return [
            DatasetInput(
                uri=self.input_uri,
                dataset=self.input_dataset,
                version=self.input_version,
                digest=self.input_digest,
                edge_deployment=self.input_edge_deployment,
            )
        ]

    def lineage(self) -> DatasetLineage:
        return DatasetLineage(
            dataset=self.dataset,
            dataset_version=self.version,
            dataset_digest=self.digest,
            sources=list(self.sources),
            inputs=self.inputs(),
        )

    def to_result(self) -> dict[str, Any]:
        """The full result (result.json in the lake)."""
        out: dict[str, Any] = {
            "kind": "Dataset",
            "outcome": self.outcome,
            "reason": self.reason,
            "message": self.message,
            "dataset": self.dataset,
            "namespace": self.namespace,
            "runId": self.run_id,
            "tableName": self.table_name,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
            "version": self.version,
            "rows": self.rows,
            "quarantinedRows": self.quarantined_rows,
            "qualityPassed": self.quality_passed,
            "quality": [q.to_wire() for q in self.quality],
            "schema": [c.to_wire() for c in self.schema],
            "table": Artifact(uri=self.table_uri, digest=self.digest).to_wire(),
            "lineage": self.lineage().to_wire(),
            "input": {"uri": self.input_uri, "version": self.input_version},
            "timings": {k: round(v, 3) for k, v in sorted(self.timings.items())},
        }
        if self.quarantine_uri is not None:
            out["quarantine"] = {"uri": self.quarantine_uri, "version": self.quarantine_version}
        return out

    def to_compact(self) -> dict[str, Any]:
        """The termination message (at most 4096 bytes once publish adds resultUri).

        A succeeded run also carries what the Dataset status shows: the lineage, then each
        expectation's result, then the schema, each list cut to the first entries that fit (a
        deterministic prefix) and `truncated` giving the full counts when any was cut."""
        out: dict[str, Any] = {
            "outcome": self.outcome,
            "reason": self.reason,
            "message": self.message[:1024],
            "version": self.version,
            "rows": self.rows,
            "quarantinedRows": self.quarantined_rows,
            "qualityPassed": self.quality_passed,
            "digest": self.digest,
        }
        if not self.succeeded:
            return out
        lineage = self.lineage().to_wire()
        inputs, sources = lineage.pop("inputs", []), lineage.pop("sources", [])
        lineage.update(inputs=[], sources=[])
        out.update(lineage=lineage, quality=[], schema=[])
        budget = TERMINATION_MESSAGE_LIMIT - RESULT_URI_RESERVE - TRUNCATION_HINT_RESERVE
        lists = (
            (lineage["inputs"], inputs),
            (out["quality"], [q.to_wire() for q in self.quality]),
            (out["schema"], [c.to_wire() for c in self.schema]),
            (lineage["sources"], sources),
        )
        complete = [_fill(out, target, items, budget) for target, items in lists]
        if not all(complete):
            out["truncated"] = {
                "columns": len(self.schema),
                "expectations": len(self.quality),
                "inputs": len(inputs),
            }
        return out


def _wire(doc: dict[str, Any]) -> bytes:
    """As compact_json serialises the message."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _fill(doc: dict[str, Any], target: list[Any], items: list[Any], budget: int) -> bool:
    """Append `items` to `target` (a list inside `doc`) while `doc` stays within `budget`
    bytes; whether all of them fit. Stops at the first that does not: a prefix, never holes."""
    for item in items:
        target.append(item)
        if len(_wire(doc)) > budget:
            target.pop()
            return False
    return True
