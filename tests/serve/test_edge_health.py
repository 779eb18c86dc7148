"""Edge fleet health: the agent's device and service metrics, and health snapshots buffered on
disk while the lake is away and uploaded when it is back (no holes in the fleet view)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from neuraxis.lake import Lake
from neuraxis.workloads.edge.health import (
    HealthBuffer,
    HostCpu,
    LakeContact,
    health_prefix,
    parse_cpu_times,
    parse_meminfo,
    parse_rss,
)

from .conftest import TinyClassifier, metric_value, write_model
from .test_edge_agent import EDGE, FOLDER, make_reachable, make_unreachable, predict, wait_for

if TYPE_CHECKING:
    from tests.serve.conftest import StartServer

HEALTH = "edge-health/default/tiny/n1"


# ---- /proc ------------------------------------------------------------------------------------
def test_proc_parsers_read_the_fields_that_matter() -> None:
    meminfo = (
        "MemTotal:       16303212 kB\nMemFree: 1 kB\nMemAvailable:   8151606 kB\n"
        "HugePages_Total: 0\n"
    )
    assert parse_meminfo(meminfo)["MemAvailable"] == 8151606 * 1024
    assert parse_meminfo(meminfo)["HugePages_Total"] == 0
    stat = "cpu  100 5 50 800 40 3 2 0 7 0\ncpu0 1 2 3 4 5 6 7 8 9 0\nintr 1\n"
    assert parse_cpu_times(stat) == (160, 1000)  # idle 800 and iowait 40 are not busy
    with pytest.raises(ValueError):
        parse_cpu_times("intr 1\n")
    assert parse_rss("Name:\tpython\nVmRSS:\t  2048 kB\n") == 2 * 1024 * 1024


def test_proc_readings_of_this_machine_are_plausible() -> None:
    with open("/proc/self/status") as fh:
        assert parse_rss(fh.read()) > 1 << 20  # a Python process holds more than 1 MiB
    with open("/proc/meminfo") as fh:
        info = parse_meminfo(fh.read())
    assert 0 < info["MemAvailable"] <= info["MemTotal"]
    stats = iter(["cpu  10 0 10 80 0 0 0 0\n", "cpu  40 0 20 140 0 0 0 0\n"])
    assert HostCpu(lambda: next(stats)).utilization() == pytest.approx(0.4)  # 40 of 100 ticks


def test_seconds_offline_counts_from_the_last_contact_that_worked() -> None:
    from prometheus_client import CollectorRegistry, Gauge

    now = [100.0]
    contact = LakeContact(Gauge("g", "g", registry=CollectorRegistry()), clock=lambda: now[0])
    now[0] = 130.0
    assert contact.seconds_offline() == 30.0  # never reached: offline since start
    contact.set(1)
    now[0] = 200.0
    assert contact.seconds_offline() == 0.0
    contact.set(0)  # the first failure: offline since the last success (t=130)
    now[0] = 260.0
    contact.set(0)  # later failures do not move the start
    assert contact.seconds_offline() == 130.0
    contact.set(1)
    assert contact.seconds_offline() == 0.0


# ---- the buffer -------------------------------------------------------------------------------
def _snap(i: int) -> dict[str, Any]:
    return {"ts": f"2026-01-01T00:00:{i:02d}Z", "i": i}


def test_buffer_is_bounded_keeps_the_newest_and_survives_a_torn_line(tmp_path: Path) -> None:
    buffer = HealthBuffer(tmp_path / "health", "n1", max_snapshots=3)
    assert [buffer.append(_snap(i)) for i in range(5)] == [0, 0, 0, 1, 1]
    assert buffer.pending() == 3
    with open(buffer.path, "ab") as fh:
        fh.write(b'{"ts": "torn')  # a crash mid-append
    again = HealthBuffer(tmp_path / "health", "n1", max_snapshots=3)
    lines = [json.loads(x) for x in again.path.read_bytes().splitlines()]
    assert [x["i"] for x in lines] == [2, 3, 4]


def test_upload_is_idempotent_and_keeps_everything_when_the_lake_fails(tmp_path: Path) -> None:
    lake_dir = tmp_path / "lake"
    lake = Lake(str(lake_dir))
    lake_dir.mkdir()
    buffer = HealthBuffer(tmp_path / "health", "n1", max_snapshots=100)
    for i in range(3):
        buffer.append(_snap(i))
    make_unreachable(lake_dir)  # the lake root is a plain file: writes fail
    with pytest.raises(Exception):  # noqa: B017 (whatever the lake raises)
        buffer.upload(Lake(str(lake_dir)), HEALTH)
    assert buffer.pending() == 3
    make_reachable(lake_dir)
    assert buffer.upload(lake, HEALTH) == 3
    assert buffer.pending() == 0 and buffer.upload(lake, HEALTH) == 0
    [name] = list(lake.list_files(HEALTH))
    assert name.endswith("n1-20260101T000000Z.jsonl")  # named by content: a retry overwrites
    assert health_prefix("inference-logs/ml/plants/n1") == "edge-health/ml/plants/n1"


# ---- the agent --------------------------------------------------------------------------------
def _health_lines(lake: Lake) -> list[dict[str, Any]]:
    out = []
    if not lake.local_path(HEALTH).is_dir():
        return []
    for name in lake.list_files(HEALTH):
        out += [json.loads(x) for x in lake.read_bytes(name).splitlines()]
    return sorted(out, key=lambda x: x["ts"])


@pytest.mark.engine
def test_agent_exports_health_and_uploads_snapshots_taken_while_offline(
    start_server: StartServer, tmp_path: Path
) -> None:
    lake_dir = tmp_path / "lake"
    lake = Lake(str(lake_dir))
    write_model(lake, FOLDER, TinyClassifier(seed=1), "v1", quantize=True)
    cache = tmp_path / "agent"
    agent = start_server(
        EDGE, "--bundle", f"file://{lake_dir}/{FOLDER}", "--cache-dir", str(cache),
        "--node", "n1", "--check-interval-s", "3600", "--sync-interval-s", "0.3",
        "--health-interval-s", "0.1", "--latency-target-ms", "50", "--max-batch-size", "16",
        "--max-in-flight", "8",
    )  # fmt: skip
    predict(agent, [[70.0, 0.5, 1.0]])
    text = agent.metrics()

    def value(name: str, **labels: str) -> float:
        found = metric_value(text, f"neuraxis_edge_{name}", **labels)
        assert found is not None, f"neuraxis_edge_{name} missing"
        return found

    assert value("process_resident_memory_bytes") > 1 << 20
    assert value("process_cpu_seconds") > 0
    assert 0 < value("host_memory_available_bytes") <= value("host_memory_total_bytes")
    assert 0 <= value("host_cpu_utilization") <= 1
    assert value("bundle_cached") == 1 and value("bundle_cache_age_seconds") >= 0
    digest = json.loads(lake.read_bytes(f"{FOLDER}/manifest.json"))["digest"]
    assert value("bundle_cached_info", digest=digest) == 1
    assert value("seconds_offline") == 0
    assert value("queue_depth") == 0
    assert 1 <= value("batch_size_limit") <= 16
    assert value("inference_seconds_count") >= 1
    wait_for(lambda: bool(_health_lines(lake)), "a first snapshot upload")

    make_unreachable(lake_dir)
    wait_for(
        lambda: (metric_value(agent.metrics(), "neuraxis_edge_seconds_offline") or 0) > 0.5,
        "seconds offline to grow",
    )
    predict(agent, [[95.0, 0.9, 1.3]])  # offline: still serving from memory
    wait_for(
        lambda: (metric_value(agent.metrics(), "neuraxis_edge_health_snapshots_pending") or 0) >= 5,
        "snapshots to pile up on disk",
    )

    make_reachable(lake_dir)
    wait_for(
        lambda: any(x["seconds_offline"] > 0.5 for x in _health_lines(lake)),
        "the offline snapshots to arrive",
    )
    wait_for(
        lambda: metric_value(agent.metrics(), "neuraxis_edge_seconds_offline") == 0,
        "back online",
    )
    lines = _health_lines(lake)
    assert {x["node"] for x in lines} == {"n1"}
    assert {x["bundle_digest"] for x in lines} == {digest}
    assert {"queue_depth", "logs_pending", "inference_seconds_mean"} <= set(lines[0])
    agent.stop()
    assert not os.path.getsize(cache / "health" / "pending.jsonl")  # the last upload at shutdown
