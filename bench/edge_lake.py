"""Edge-log ingest (workloads/edge/lake_table.py): uploaded segments into the per-EdgeDeployment
Delta table. The baseline is a blind append of the same rows (write_deltalake mode append: what an
ingest without duplicate protection would cost); the figure is rows/s of the idempotent ingest
(skip known segment names, MERGE the rest on site, node, day, id) into a table that already holds
one batch, and its time against the append's. Then the same ingest again with nothing new (the
cost of a Dataset run when no node uploaded since the last one).

    .venv/bin/python bench/edge_lake.py [--segments 40] [--records 500]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from neuraxis.lake import Lake
from neuraxis.workloads.edge.lake_table import (
    PARTITION_COLUMNS,
    LakeFields,
    arrow_schema,
    ingest,
    segment_rows,
)

FEATURES = [f"f{i}" for i in range(8)]


def upload(lake: Lake, batch: int, segments: int, records: int) -> list[str]:
    """`segments` segments of `records` agent records over 4 nodes of 2 sites."""
    names = []
    for s in range(segments):
        node = f"n{s % 4}"
        fields = LakeFields(f"site-{s % 2}", node, 0.8)
        lines = []
        for r in range(records):
            top = 0.5 + (r % 50) / 100
            output = [top, 1 - top]
            row = [float(r + i) for i in range(len(FEATURES))]
            record = {
                "id": f"{batch}-{s}-{r}",
                "ts": f"2026-06-{1 + r % 3:02d}T10:00:00Z",
                "model": "m",
                "model_version": "v1",
                "bundle_digest": "sha256:" + "0" * 64,
                "prediction": "ok",
                "output": output,
                **fields.for_row(FEATURES, row, output),
            }
            lines.append(json.dumps(record))
        rel = f"{Lake.inference_logs_path('b', 'edge')}/{node}/{node}-{batch}-{s:012d}.jsonl"
        lake.write_bytes(rel, ("\n".join(lines) + "\n").encode())
        names.append(rel)
    return names


def blind_append_s(lake: Lake, names: list[str], table: str) -> float:
    import pyarrow as pa
    from deltalake import write_deltalake

    start = time.perf_counter()
    rows = [r for n in names for r in segment_rows(lake.read_bytes(n), n.split("/")[-2], n)]
    data = pa.Table.from_pylist(rows, schema=arrow_schema())
    write_deltalake(table, data, partition_by=list(PARTITION_COLUMNS), mode="append")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--segments", type=int, default=40)
    parser.add_argument("--records", type=int, default=500)
    args = parser.parse_args()
    rows = args.segments * args.records
    with tempfile.TemporaryDirectory() as tmp:
        lake = Lake(str(Path(tmp) / "lake"))
        first = upload(lake, 0, args.segments, args.records)
        ingest(lake, "b", "edge")  # the table exists and holds one batch
        second = upload(lake, 1, args.segments, args.records)
        start = time.perf_counter()
        result = ingest(lake, "b", "edge")
        ingest_s = time.perf_counter() - start
        assert result.rows_inserted == rows, result
        start = time.perf_counter()
        idle = ingest(lake, "b", "edge")
        idle_s = time.perf_counter() - start
        assert idle.rows_inserted == 0
        baseline = str(Path(tmp) / "append")
        blind_append_s(lake, first, baseline)
        append_s = blind_append_s(lake, second, baseline)
    print(f"rows per batch: {rows} ({args.segments} segments x {args.records})")
    print(f"idempotent ingest: {ingest_s:.2f} s ({rows / ingest_s:,.0f} rows/s)")
    print(f"blind append (baseline): {append_s:.2f} s ({rows / append_s:,.0f} rows/s)")
    print(f"ratio ingest/append: {ingest_s / append_s:.2f}")
    print(f"ingest with nothing new: {idle_s:.2f} s")


if __name__ == "__main__":
    main()
