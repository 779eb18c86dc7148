"""OpenLineage events: shape, the lake's jsonl record, and the best-effort POST (to a real HTTP
server on loopback; a dead one never fails the run)."""

from __future__ import annotations

import json
import socket
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from neuraxis.lake import Lake
from neuraxis.lineage import (
    LineageDataset,
    build_run_event,
    emit_run_event,
    lake_dataset,
    openlineage_run_id,
    read_events,
    schema_facet,
)


class _Collector(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        self.send_response(201)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    _Collector.received = []
    server = HTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/api/v1/lineage", _Collector.received
    server.shutdown()
    server.server_close()


def test_run_event_shape(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path))
    out = lake_dataset(lake, "tables/ml/t", [("a", "int"), ("b", "string")], version=3)
    event = build_run_event(
        "COMPLETE", "ml.t", "run-1", [LineageDataset("s3://raw", "/x.csv")], [out], namespace="ml"
    )
    assert event["eventType"] == "COMPLETE"
    assert event["schemaURL"].startswith("https://openlineage.io/spec/")
    assert event["eventTime"].endswith("Z")
    uuid.UUID(event["run"]["runId"])  # OpenLineage requires a UUID
    assert event["run"]["facets"]["neuraxis"]["runId"] == "run-1"
    assert event["job"] == {"namespace": "ml", "name": "ml.t", "facets": {}}
    assert event["inputs"] == [
        {"namespace": "s3://raw", "name": "/x.csv", "facets": {}, "inputFacets": {}}
    ]
    output = event["outputs"][0]
    assert output["namespace"] == lake.root
    assert output["name"] == "tables/ml/t"
    assert output["facets"]["schema"]["fields"] == [
        {"name": "a", "type": "int"},
        {"name": "b", "type": "string"},
    ]
    assert output["facets"]["version"]["datasetVersion"] == "3"
    assert schema_facet([("a", "int")])["_schemaURL"].endswith("SchemaDatasetFacet")


def test_run_ids_map_to_stable_uuids() -> None:
    k8s_uid = "7f9c1a52-3b7e-4c1d-9a51-0c8e2d6b1f00"
    assert openlineage_run_id(k8s_uid) == k8s_uid
    assert openlineage_run_id("local-1") == openlineage_run_id("local-1")
    assert openlineage_run_id("local-1") != openlineage_run_id("local-2")


def test_events_are_appended_to_the_lake_and_posted(
    tmp_path: Path, collector: tuple[str, list[dict[str, Any]]]
) -> None:
    url, received = collector
    lake = Lake(str(tmp_path))
    outputs = [lake_dataset(lake, "tables/ml/t")]
    emit_run_event(lake, "START", "ml.t", "r1", [], outputs, namespace="ml", url=url)
    emit_run_event(
        lake, "FAIL", "ml.t", "r1", [], outputs, namespace="ml", url=url, error="SourceNotFound: x"
    )
    emit_run_event(lake, "START", "ml.t", "r2", [], outputs, namespace="ml", url=url)
    events = read_events(lake, "r1")
    assert [e["eventType"] for e in events] == ["START", "FAIL"]
    assert events[1]["run"]["facets"]["errorMessage"]["message"] == "SourceNotFound: x"
    assert len(read_events(lake)) == 3
    # Each namespace's events live under its own prefix (what its scoped credentials reach).
    emit_run_event(lake, "START", "ops.t", "r3", [], [], namespace="ops", url=url)
    assert lake.exists(Lake.lineage_events_path("ops"))
    assert [e["run"]["runId"] for e in read_events(lake, namespace="ops")] == [
        received[-1]["run"]["runId"]
    ]
    assert len(read_events(lake, namespace="ml")) == 3
    assert len(read_events(lake)) == 4
    assert [e["eventType"] for e in received] == ["START", "FAIL", "START", "START"]
    assert received[1] == events[1]


def test_a_dead_lineage_server_never_fails_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("NEURAXIS_LINEAGE_URL", f"http://127.0.0.1:{port}/api/v1/lineage")
    lake = Lake(str(tmp_path))
    event = emit_run_event(lake, "START", "ml.t", "r1", [], [], namespace="ml")
    assert read_events(lake) == [event]
