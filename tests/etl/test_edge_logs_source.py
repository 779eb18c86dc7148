"""A Dataset over an EdgeDeployment's inference logs, through the real ETL (Spark): segments as
the agents upload them are ingested into the edge-logs Delta table and read back with one column
per feature; hardExamplesOnly keeps the flagged rows; lineage names the EdgeDeployment and the
table version read; a segment uploaded twice adds nothing."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
from deltalake import DeltaTable

from neuraxis.lake import Lake
from neuraxis.workloads.edge.lake_table import LakeFields
from neuraxis.workloads.etl.run import run_etl
from tests.etl.conftest import dataset_from

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

pytestmark = pytest.mark.engine
NS = "plant"
EDGE = "detector-edge"
FEATURES = ["temperature", "vibration"]


def record(i: int, site: str, node: str, top: float) -> dict[str, Any]:
    """One record as the agent writes it (workloads/edge/agent.py log_records)."""
    output = [top, round(1 - top, 6)]
    row = [60.0 + i, 0.1 * i]
    return {
        "id": f"{node}-{i}",
        "ts": f"2026-05-0{1 + i % 2}T12:00:00Z",
        "model": "detector",
        "model_version": "v1",
        "bundle_digest": "sha256:" + "a" * 64,
        "inputs": {"n": 2, "min": min(row), "max": max(row), "mean": sum(row) / 2},
        "prediction": "ok",
        "output": output,
        **LakeFields(site, node, 0.7).for_row(FEATURES, row, output),
    }


def upload(lake: Lake, node: str, seq: int, records: list[dict[str, Any]]) -> str:
    rel = f"{Lake.inference_logs_path(NS, EDGE)}/{node}/{node}-b0-{seq:012d}.jsonl"
    lake.write_bytes(rel, b"".join(json.dumps(r).encode() + b"\n" for r in records))
    return rel


def edge_spec(hard_only: bool = False) -> dict[str, Any]:
    source: dict[str, Any] = {"edgeDeploymentRef": {"name": EDGE}}
    if hard_only:
        source["hardExamplesOnly"] = True
    return {"source": {"from": source}}


def test_dataset_reads_edge_logs_with_features_hard_examples_and_lineage(
    spark: SparkSession, lake: Lake
) -> None:
    tops = [0.95, 0.6, 0.8, 0.51]  # hard (< 0.7): the 2nd and the 4th
    upload(lake, "n1", 0, [record(i, "plant-a", "n1", t) for i, t in enumerate(tops)])
    seg = upload(lake, "n2", 0, [record(i, "plant-b", "n2", t) for i, t in enumerate(tops[:2])])

    def run(spec: dict[str, Any], name: str, run_id: str) -> Any:
        ds = dataset_from(spec, name)
        return run_etl(ds, lake, run_id=run_id, namespace=NS, spark=spark)

    full = run(edge_spec(), "edge-logs", "r1")
    assert full.succeeded, full.message
    assert full.rows == 6
    rows = DeltaTable(full.table_uri).to_pyarrow_table().to_pylist()
    assert {"temperature", "vibration", "site", "node", "day", "confidence"} <= set(rows[0])
    assert "features" not in rows[0]
    n1 = {r["id"]: r for r in rows if r["node"] == "n1"}
    assert n1["n1-3"]["temperature"] == 63.0 and n1["n1-3"]["vibration"] == pytest.approx(0.3)
    assert {r["site"] for r in rows} == {"plant-a", "plant-b"}
    [source] = full.inputs()
    assert (source.edge_deployment, source.version, source.dataset) == (EDGE, 0, None)
    assert source.uri == lake.uri(Lake.edge_logs_table_path(NS, EDGE))
    assert full.sources == (f"{source.uri}@v0",)

    hard = run(edge_spec(hard_only=True), "edge-hard", "r2")
    assert hard.succeeded, hard.message
    hard_rows = DeltaTable(hard.table_uri).to_pyarrow_table().to_pylist()
    assert sorted(r["id"] for r in hard_rows) == ["n1-1", "n1-3", "n2-1"]
    assert all(r["confidence"] < 0.7 for r in hard_rows)
    assert hard.inputs()[0].version == 0  # nothing new uploaded: the same table version

    # A late node's segment, and one segment uploaded a second time: only the new rows count.
    lake.write_bytes(seg, lake.read_bytes(seg))
    upload(lake, "n3", 0, [record(9, "plant-a", "n3", 0.9)])
    again = run(edge_spec(), "edge-logs", "r3")
    assert again.succeeded, again.message
    assert (again.rows, again.inputs()[0].version) == (7, 1)


def test_dataset_over_an_edge_deployment_without_uploads_fails_clearly(
    spark: SparkSession, lake: Lake
) -> None:
    result = run_etl(dataset_from(edge_spec()), lake, run_id="r", namespace=NS, spark=spark)
    assert not result.succeeded
    assert result.reason == "UpstreamNotFound"
    assert "spec.source.from.edgeDeploymentRef" in result.message
    assert "no inference logs uploaded yet" in result.message
