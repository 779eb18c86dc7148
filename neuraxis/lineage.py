"""OpenLineage run events (START, COMPLETE, FAIL) for every workload.

Events are appended to the lake's `lineage/events.jsonl` (the record that always exists) and,
when `NEURAXIS_LINEAGE_URL` is set (e.g. Marquez's `/api/v1/lineage`), POSTed there with a short
timeout. A lineage server that is down never fails the run: the POST is best effort, the lake
copy is not.

Datasets are named the OpenLineage way: `namespace` is where they live (the lake root for lake
tables), `name` is the path inside it (e.g. `tables/ml/sensor-readings`).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from neuraxis import __version__
from neuraxis.lake import Lake

LINEAGE_URL_ENV = "NEURAXIS_LINEAGE_URL"
POST_TIMEOUT_S = 2.0
PRODUCER = f"https://github.com/neuraxis/neuraxis/tree/v{__version__}"
SCHEMA_URL = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent"
_FACETS = "https://openlineage.io/spec/facets"
SCHEMA_FACET_URL = f"{_FACETS}/1-1-1/SchemaDatasetFacet.json#/$defs/SchemaDatasetFacet"
VERSION_FACET_URL = (
    f"{_FACETS}/1-0-1/DatasetVersionDatasetFacet.json#/$defs/DatasetVersionDatasetFacet"
)
ERROR_FACET_URL = f"{_FACETS}/1-0-1/ErrorMessageRunFacet.json#/$defs/ErrorMessageRunFacet"
# A custom run facet: the workload's own run id when it is not a UUID (OpenLineage wants one).
NEURAXIS_RUN_FACET_URL = f"{PRODUCER}/neuraxis/lineage.py#NeuraxisRunFacet"

EventType = Literal["START", "COMPLETE", "FAIL", "ABORT"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LineageDataset:
    """An input or output of a run: where it lives, its name there, and optionally its schema
    (column name and type) and version."""

    namespace: str
    name: str
    fields: Sequence[tuple[str, str]] = ()
    version: str | None = None
    extra_facets: Mapping[str, Any] = field(default_factory=dict)


def lake_dataset(
    lake: Lake,
    rel: str,
    fields: Sequence[tuple[str, str]] = (),
    version: int | str | None = None,
) -> LineageDataset:
    """A lake table (or folder) as an OpenLineage dataset: namespace = lake root."""
    return LineageDataset(
        namespace=lake.root,
        name=rel.strip("/"),
        fields=tuple(fields),
        version=None if version is None else str(version),
    )


def schema_facet(fields: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """OpenLineage SchemaDatasetFacet for (name, type) pairs."""
    return {
        "_producer": PRODUCER,
        "_schemaURL": SCHEMA_FACET_URL,
        "fields": [{"name": name, "type": type_} for name, type_ in fields],
    }


def _dataset_json(ds: LineageDataset, *, output: bool) -> dict[str, Any]:
    facets: dict[str, Any] = {}
    if ds.fields:
        facets["schema"] = schema_facet(ds.fields)
    if ds.version is not None:
        facets["version"] = {
            "_producer": PRODUCER,
            "_schemaURL": VERSION_FACET_URL,
            "datasetVersion": ds.version,
        }
    facets.update(ds.extra_facets)
    key = "outputFacets" if output else "inputFacets"
    return {"namespace": ds.namespace, "name": ds.name, "facets": facets, key: {}}


def openlineage_run_id(run_id: str) -> str:
    """OpenLineage run ids are UUIDs: a Kubernetes uid is one already; anything else maps to a
    stable UUID (uuid5), so the same run always gets the same id."""
    try:
        return str(uuid.UUID(run_id))
    except ValueError:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"neuraxis-run:{run_id}"))


def build_run_event(
    event_type: EventType,
    job_name: str,
    run_id: str,
    inputs: Sequence[LineageDataset],
    outputs: Sequence[LineageDataset],
    *,
    namespace: str,
    error: str | None = None,
    event_time: datetime | None = None,
) -> dict[str, Any]:
    """One OpenLineage RunEvent as a JSON-ready dict (pure)."""
    run_facets: dict[str, Any] = {
        "neuraxis": {"_producer": PRODUCER, "_schemaURL": NEURAXIS_RUN_FACET_URL, "runId": run_id}
    }
    if error is not None:
        run_facets["errorMessage"] = {
            "_producer": PRODUCER,
            "_schemaURL": ERROR_FACET_URL,
            "message": error,
            "programmingLanguage": "python",
        }
    when = (event_time or datetime.now(UTC)).astimezone(UTC)
    return {
        "eventType": event_type,
        "eventTime": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "producer": PRODUCER,
        "schemaURL": SCHEMA_URL,
        "run": {"runId": openlineage_run_id(run_id), "facets": run_facets},
        "job": {"namespace": namespace, "name": job_name, "facets": {}},
        "inputs": [_dataset_json(d, output=False) for d in inputs],
        "outputs": [_dataset_json(d, output=True) for d in outputs],
    }


def post_event(url: str, event: Mapping[str, Any], timeout: float = POST_TIMEOUT_S) -> bool:
    """POST one event; False (and a warning) on any failure: lineage never fails a run."""
    import httpx

    try:
        response = httpx.post(url, json=dict(event), timeout=timeout)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        log.warning("lineage POST to %s failed: %s", url, exc)
        return False
    return True


def emit_run_event(
    lake: Lake,
    event_type: EventType,
    job_name: str,
    run_id: str,
    inputs: Sequence[LineageDataset],
    outputs: Sequence[LineageDataset],
    *,
    namespace: str,
    error: str | None = None,
    url: str | None = None,
) -> dict[str, Any]:
    """Append a run event to `lineage/<namespace>/events.jsonl` in the lake (a run's scoped
    credentials reach only its own namespace) and POST it to `url` (default
    `$NEURAXIS_LINEAGE_URL`, if set). Returns the event."""
    event = build_run_event(
        event_type, job_name, run_id, inputs, outputs, namespace=namespace, error=error
    )
    lake.append_jsonl(Lake.lineage_events_path(namespace), event)
    target = url if url is not None else os.environ.get(LINEAGE_URL_ENV)
    if target:
        post_event(target, event)
    return event


def read_events(
    lake: Lake, run_id: str | None = None, *, namespace: str | None = None
) -> list[dict[str, Any]]:
    """The lineage events of one namespace (default: of every namespace, namespace by
    namespace), optionally only those of one run (by the workload's run id)."""
    namespaces = [namespace] if namespace is not None else lineage_namespaces(lake)
    events = [e for ns in namespaces for e in lake.read_jsonl(Lake.lineage_events_path(ns))]
    if run_id is None:
        return events
    wanted = openlineage_run_id(run_id)
    return [e for e in events if e.get("run", {}).get("runId") == wanted]


def lineage_namespaces(lake: Lake) -> list[str]:
    """The namespaces with lineage events in the lake (`lineage/<ns>/...`), sorted."""
    return sorted({rel.split("/")[1] for rel in lake.list_files(Lake.LINEAGE_PREFIX)})
