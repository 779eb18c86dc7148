"""Edge inference logs into the per-EdgeDeployment Delta table: the record -> row mapping and
the hard-example flag (pure), then a real agent that serves, uploads, and whose logs land once
in a table partitioned by site, node and day, however often a segment is uploaded."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from neuraxis.lake import Lake
from neuraxis.workloads.edge.lake_table import (
    LakeFields,
    RecordError,
    confidence_of,
    hard_example_flag,
    ingest,
    read_rows,
    record_to_row,
    segment_rows,
    site_of,
    unique_rows,
)

from .conftest import FEATURES, TinyClassifier, write_model

if TYPE_CHECKING:
    from tests.serve.conftest import StartServer

EDGE = "neuraxis.workloads.edge"
FOLDER = "edge/default/tiny/v1"


# ---- pure: confidence, flag, record -> row ------------------------------------------------------


def test_confidence_is_the_top_class_probability_and_regression_has_none() -> None:
    assert confidence_of([0.2, 0.7, 0.1]) == 0.7
    assert confidence_of(3.5) is None  # a regression output
    assert confidence_of([]) is None
    assert confidence_of(["a", "b"]) is None


@pytest.mark.parametrize(
    ("confidence", "threshold", "flag"),
    [
        (0.55, 0.6, True),
        (0.6, 0.6, False),  # "below" the threshold: equal is not hard
        (0.95, 0.6, False),
        (0.99, 1.0, True),  # threshold 1: anything not certain
        (0.55, None, None),  # no threshold in the spec: nothing flagged
        (None, 0.6, None),  # regression: never flagged
    ],
)
def test_hard_example_flag(confidence: float | None, threshold: float | None, flag: bool) -> None:
    assert hard_example_flag(confidence, threshold) is flag


def test_site_comes_from_the_flag_the_env_or_the_node_map(tmp_path: Path) -> None:
    sites = tmp_path / "node-sites.json"
    sites.write_text('{"n1": "plant-a", "n2": "plant-b"}')
    assert site_of("n2", None, None, sites) == "plant-b"
    assert site_of("n2", None, "plant-x", sites) == "plant-x"  # one-site deployments: the env
    assert site_of("n2", "plant-y", "plant-x", sites) == "plant-y"
    assert site_of("n9", None, None, sites) == "unknown"  # joined after the map was written
    assert site_of("n1", None, None, tmp_path / "absent.json") == "unknown"
    assert site_of("n1", None, None, None) == "unknown"


def agent_record(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": "a1",
        "ts": "2026-03-04T23:59:59.250000Z",
        "model": "tiny",
        "model_version": "v1",
        "bundle_digest": "sha256:" + "0" * 64,
        "inputs": {"n": 3, "min": 0.5, "max": 70.0, "mean": 23.8},
        "prediction": "ok",
        "output": [0.58, 0.42],
        **LakeFields("plant-a", "n1", 0.6).for_row(FEATURES, [70.0, 0.5, 1.0], [0.58, 0.42]),
    }
    record.update(overrides)
    return record


def test_record_to_row_maps_every_column() -> None:
    row = record_to_row(agent_record(), "path-node", "inference-logs/default/d/n1/seg.jsonl")
    assert row == {
        "id": "a1",
        "ts": datetime(2026, 3, 4, 23, 59, 59, 250000, tzinfo=UTC),
        "site": "plant-a",
        "node": "n1",  # the record's own node wins over the upload path's
        "day": date(2026, 3, 4),  # the UTC day of the prediction, not of the upload
        "model": "tiny",
        "model_version": "v1",
        "digest": "sha256:" + "0" * 64,
        "features": [("pressure", 1.0), ("temperature", 70.0), ("vibration", 0.5)],
        "prediction": "ok",
        "probabilities": [0.58, 0.42],
        "value": None,
        "confidence": 0.58,
        "hard_example": True,
        "hard_example_threshold": 0.6,
        "source_file": "inference-logs/default/d/n1/seg.jsonl",
    }


def test_record_from_an_older_agent_gets_node_from_its_path_and_unknown_site() -> None:
    old = {k: v for k, v in agent_record().items() if k not in ("site", "node", "features")}
    old.pop("hard_example")
    row = record_to_row(old, "n7", "seg.jsonl")
    assert (row["site"], row["node"], row["features"]) == ("unknown", "n7", [])
    assert row["hard_example"] is True  # recomputed from the recorded threshold and output


def test_regression_record_is_never_flagged() -> None:
    fields = LakeFields("plant-a", "n1", 0.6).for_row(FEATURES, [1.0, 2.0, 3.0], 41.5)
    row = record_to_row(agent_record(output=41.5, prediction=41.5, **fields), "n1", "s")
    assert (row["value"], row["prediction"], row["confidence"]) == (41.5, "41.5", None)
    assert row["hard_example"] is None and row["probabilities"] is None


def test_local_time_is_converted_to_the_utc_day() -> None:
    row = record_to_row(agent_record(ts="2026-03-05T01:30:00+02:00"), "n1", "s")
    assert row["day"] == date(2026, 3, 4)


@pytest.mark.parametrize(
    ("change", "field"),
    [({"ts": "yesterday"}, "ts"), ({"ts": None}, "ts"), ({"features": [1.0]}, "features")],
)
def test_bad_record_names_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(RecordError, match=f"^{field}: "):
        record_to_row(agent_record(**change), "n1", "s")


def test_bad_line_in_a_segment_names_file_and_line() -> None:
    data = json.dumps(agent_record()).encode() + b"\n\nnot json\n"
    with pytest.raises(RecordError, match=r"^seg\.jsonl:3: not JSON"):
        segment_rows(data, "n1", "seg.jsonl")


def test_the_same_record_in_two_new_segments_is_kept_once() -> None:
    first = segment_rows(json.dumps(agent_record()).encode() + b"\n", "n1", "a.jsonl")
    second = segment_rows(json.dumps(agent_record()).encode() + b"\n", "n1", "b.jsonl")
    other = segment_rows(json.dumps(agent_record(id="a2")).encode() + b"\n", "n1", "b.jsonl")
    kept = unique_rows([*first, *second, *other])
    assert [(r["id"], r["source_file"]) for r in kept] == [("a1", "a.jsonl"), ("a2", "b.jsonl")]


# ---- engine: a real agent serves, uploads; ingest makes the table --------------------------------


def assert_no_op(lake: Lake, version: int | None, rereads: int) -> None:
    """An ingest with nothing new: no row, no commit; `rereads` segments whose rows were all
    present already (copies) are read again, as the docstring of lake_table says."""
    again = ingest(lake, "default", "tiny-edge")
    assert (again.segments, again.rows_inserted, again.version) == (rereads, 0, version)


@pytest.mark.engine
def test_agent_logs_land_once_in_the_partitioned_delta_table(
    start_server: StartServer, tmp_path: Path
) -> None:
    lake_dir = tmp_path / "lake"
    lake = Lake(str(lake_dir))
    write_model(lake, FOLDER, TinyClassifier(seed=1), "v1", quantize=True)
    rows = [[70.0, 0.5, 1.0], [95.0, 0.9, 1.3], [50.0, 0.1, 0.8], [71.0, 0.52, 1.01]]
    for node, site in (("n1", "plant-a"), ("n2", "plant-b")):
        agent = start_server(
            EDGE,
            *["--bundle", f"file://{lake_dir}/{FOLDER}", "--cache-dir", str(tmp_path / node)],
            *["--node", node, "--deployment", "tiny-edge", "--sync-interval-s", "3600"],
            "--hard-example-threshold",
            "0.9",
            env={"NEURAXIS_EDGE_SITE": site},
        )
        response = agent.client.post("/v1/models/tiny:predict", json={"instances": rows})
        assert response.status_code == 200, response.text
        probabilities = response.json()["probabilities"]
        agent.stop()  # SIGTERM: the shutdown sync uploads the sealed segment
    raw = Lake.inference_logs_path("default", "tiny-edge")
    segments = sorted(lake.list_files(raw))
    assert [s.split("/")[-2] for s in segments] == ["n1", "n2"]

    # A copy of a segment arriving with it (the table's first commit, no MERGE yet): once.
    early_copy = segments[0].replace(".jsonl", "-early.jsonl")
    lake.write_bytes(early_copy, lake.read_bytes(segments[0]))
    first = ingest(lake, "default", "tiny-edge")
    assert (first.segments, first.rows_inserted, first.version) == (3, 8, 0)
    table = read_rows(first.table_uri, lake)
    assert len(table) == 8 and len({r["id"] for r in table}) == 8
    assert {(r["site"], r["node"]) for r in table} == {("plant-a", "n1"), ("plant-b", "n2")}
    today = datetime.now(UTC).date()
    assert {r["day"] for r in table} <= {today, date.fromordinal(today.toordinal() - 1)}
    # Hive-style partition folders, in the order site, node, day.
    table_dir = lake.local_path(Lake.edge_logs_table_path("default", "tiny-edge"))
    parquet = [p.relative_to(table_dir) for p in table_dir.rglob("*.parquet")]
    assert parquet and all(
        p.parts[0].startswith("site=") and p.parts[1].startswith("node=") for p in parquet
    )
    assert all(p.parts[2].startswith("day=") for p in parquet)
    by_features = {tuple(v for _, v in sorted(dict(r["features"]).items())): r for r in table}
    for row, probs in zip(rows, probabilities, strict=True):
        logged = by_features[(row[2], row[0], row[1])]  # pressure, temperature, vibration
        assert logged["confidence"] == pytest.approx(max(probs))
        assert logged["hard_example"] is (max(probs) < 0.9)
        assert logged["model_version"] == "v1" and logged["hard_example_threshold"] == 0.9
    assert any(r["hard_example"] for r in table) and not all(r["hard_example"] for r in table)

    # A crash between upload and local delete re-uploads the same segment: nothing is added.
    lake.write_bytes(segments[0], lake.read_bytes(segments[0]))
    assert_no_op(lake, first.version, rereads=1)  # the early copy
    # The same records under other names (copied segments, two in one ingest): the MERGE on id
    # keeps them once.
    for suffix in ("-copy", "-copy2"):
        copy = segments[0].replace(".jsonl", f"{suffix}.jsonl")
        lake.write_bytes(copy, lake.read_bytes(segments[0]))
    third = ingest(lake, "default", "tiny-edge")
    assert (third.segments, third.rows_inserted) == (3, 0)
    assert len(read_rows(third.table_uri, lake)) == 8
    assert_no_op(lake, third.version, rereads=3)
