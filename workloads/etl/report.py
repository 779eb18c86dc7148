"""The outcome of one ETL run, in the shapes its readers want: the full result JSON (fields named
and typed like DatasetStatus, so the operator copies them into status) and the compact
termination message."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from neuraxis.crds.common import Artifact, Lineage
from neuraxis.crds.dataset import ColumnSchema, QualityResult

Outcome = Literal["Succeeded", "Failed"]


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
    sources: tuple[str, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def succeeded(self) -> bool:
        return self.outcome == "Succeeded"

    def lineage(self) -> Lineage:
        return Lineage(
            dataset=self.dataset,
            dataset_version=self.version,
            dataset_digest=self.digest,
            sources=list(self.sources),
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
        """The termination message (at most 4096 bytes once publish adds resultUri)."""
        return {
            "outcome": self.outcome,
            "reason": self.reason,
            "message": self.message[:1024],
            "version": self.version,
            "rows": self.rows,
            "quarantinedRows": self.quarantined_rows,
            "qualityPassed": self.quality_passed,
            "digest": self.digest,
        }
