"""The edge agent as a real process: bundle verification, no swap outside a rollout, offline
start from the cache, and inference logs that survive crashes and restarts and reach the lake
exactly once."""

from __future__ import annotations

import json
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import torch

from neuraxis.lake import Lake

from .conftest import TinyClassifier, load_scripted, metric_value, script_bytes, write_model

if TYPE_CHECKING:
    from tests.serve.conftest import ServerProcess, StartServer

pytestmark = pytest.mark.engine

EDGE = "neuraxis.workloads.edge"
FOLDER = "edge/default/tiny/v1"
LOGS = "inference-logs/default/tiny/n1"


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def make_unreachable(lake_dir: Path) -> None:
    """The lake goes away: its root becomes a plain file, so reads and writes fail."""
    lake_dir.rename(lake_dir.with_name("lake.away"))
    lake_dir.write_text("unreachable")


def make_reachable(lake_dir: Path) -> None:
    lake_dir.unlink()
    lake_dir.with_name("lake.away").rename(lake_dir)


def agent_args(
    lake_dir: Path, cache: Path, check: float = 3600, sync: float = 3600, digest: str = ""
) -> list[str]:
    return [
        "--bundle", f"file://{lake_dir}/{FOLDER}", "--cache-dir", str(cache), "--node", "n1",
        "--check-interval-s", str(check), "--sync-interval-s", str(sync),
        *(["--digest", digest] if digest else []),
    ]  # fmt: skip


def predict(agent: ServerProcess, rows: list[list[float]]) -> dict[str, Any]:
    response = agent.client.post("/v1/models/tiny:predict", json={"instances": rows})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def served_version(agent: ServerProcess, version: str) -> bool:
    return metric_value(agent.metrics(), "neuraxis_serve_model_info", version=version) == 1.0


def test_verified_bundle_no_silent_swap_tamper_refusal_and_offline_start(
    start_server: StartServer, tmp_path: Path
) -> None:
    lake_dir = tmp_path / "lake"
    lake = Lake(str(lake_dir))
    v1, v2 = TinyClassifier(seed=1), TinyClassifier(seed=2)
    write_model(lake, FOLDER, v1, "v1", quantize=True)
    cache = tmp_path / "agent"
    agent = start_server(EDGE, *agent_args(lake_dir, cache, check=0.3))

    rows = [[70.0, 0.5, 1.0], [95.0, 0.9, 1.3], [50.0, 0.1, 0.8]]
    direct = load_scripted(lake.read_bytes(f"{FOLDER}/model.ts"))
    expected = direct(torch.tensor(rows))
    body = predict(agent, rows)
    assert body["model_version"] == "v1"
    assert torch.allclose(torch.tensor(body["probabilities"]), expected, atol=1e-6)
    assert served_version(agent, "v1")

    # A v2 whose model.ts does not match its manifest: refused, v1 keeps serving.
    staging = "staging/tampered"
    write_model(lake, staging, v2, "v2", quantize=True)
    tampered = script_bytes(TinyClassifier(seed=3), quantize=True)
    for name, data in (("model.ts", tampered), ("signature.json", None), ("manifest.json", None)):
        lake.write_bytes(f"{FOLDER}/{name}", data or lake.read_bytes(f"{staging}/{name}"))

    def refused() -> bool:
        return (metric_value(agent.metrics(), "neuraxis_edge_bundle_refusals_total") or 0) >= 1

    wait_for(refused, "the tampered bundle to be refused")
    assert predict(agent, rows)["model_version"] == "v1"
    assert served_version(agent, "v1")

    # A genuine v2 at the same URI is not swapped in silently either: the agent (pinned to the
    # v1 it started with) refuses it and keeps serving v1.
    ref_v2 = write_model(lake, FOLDER, v2, "v2", quantize=True)
    wait_for(lambda: "is not the pinned" in agent.output(), "the v2 at the URI to be refused")
    assert predict(agent, rows)["model_version"] == "v1"
    assert served_version(agent, "v1")
    agent.stop()

    # v2 arrives through a rollout: a new agent (DaemonSet template) pinned to its digest.
    agent = start_server(EDGE, *agent_args(lake_dir, cache, digest=ref_v2.digest))
    expected_v2 = load_scripted(lake.read_bytes(f"{FOLDER}/model.ts"))(torch.tensor(rows))
    body = predict(agent, rows)
    assert body["model_version"] == "v2"
    assert torch.allclose(torch.tensor(body["probabilities"]), expected_v2, atol=1e-6)
    agent.stop()

    # Lake gone: a restart serves v2 from the cache; a node without a cache refuses to start.
    make_unreachable(lake_dir)
    offline = start_server(EDGE, *agent_args(lake_dir, cache))
    assert predict(offline, rows)["model_version"] == "v2"
    assert metric_value(offline.metrics(), "neuraxis_edge_lake_reachable") == 0.0
    fresh = start_server(EDGE, *agent_args(lake_dir, tmp_path / "fresh"), ready=False)
    assert fresh.proc.wait(120) == 2
    assert "no cached bundle" in fresh.output()


def test_buffered_logs_survive_crash_and_restart_and_arrive_once(
    start_server: StartServer, tmp_path: Path
) -> None:
    lake_dir = tmp_path / "lake"
    lake = Lake(str(lake_dir))
    write_model(lake, FOLDER, TinyClassifier(seed=1), "v1", quantize=True)
    cache = tmp_path / "agent"
    rng = random.Random(11)
    sent: list[list[float]] = []

    def send(agent: ServerProcess, requests: int) -> None:
        for _ in range(requests):
            rows = [[rng.uniform(40, 100), rng.uniform(0, 1), rng.uniform(0.5, 1.5)]
                    for _ in range(rng.randint(1, 3))]  # fmt: skip
            predict(agent, rows)
            sent.extend(rows)

    first = start_server(EDGE, *agent_args(lake_dir, cache))  # caches the bundle
    make_unreachable(lake_dir)
    send(first, 10)
    first.stop(signal.SIGKILL)  # a crash: no shutdown, no upload
    buffered = (cache / "logs" / "active.jsonl").read_bytes().count(b"\n")
    assert buffered == len(sent)

    second = start_server(EDGE, *agent_args(lake_dir, cache))  # offline, from the cache
    send(second, 5)
    second.stop()  # graceful, but the lake is still unreachable: the logs stay on disk
    make_reachable(lake_dir)
    assert not list(lake.list_files("inference-logs"))

    third = start_server(EDGE, *agent_args(lake_dir, cache, sync=0.3))

    def uploaded() -> list[dict[str, Any]]:
        records = []
        for rel in lake.list_files("inference-logs"):
            records += [json.loads(line) for line in lake.read_bytes(rel).splitlines()]
        return records

    wait_for(lambda: len(uploaded()) >= len(sent), "the buffered logs to be uploaded")
    wait_for(lambda: metric_value(third.metrics(), "neuraxis_edge_logs_pending") == 0.0, "drain")
    third.stop()
    fourth = start_server(EDGE, *agent_args(lake_dir, cache, sync=0.3))
    fourth.stop()  # its shutdown syncs once more: nothing may be sent twice

    records = uploaded()
    assert all(rel.startswith(LOGS + "/") for rel in lake.list_files("inference-logs"))
    assert len({r["id"] for r in records}) == len(records) == len(sent)
    got = sorted((r["inputs"]["min"], r["inputs"]["max"], r["inputs"]["mean"]) for r in records)
    want = sorted((min(row), max(row), sum(row) / 3) for row in sent)
    assert got == want  # the same floats, summarised the same way: exact
    assert {r["model_version"] for r in records} == {"v1"}
    assert all(r["prediction"] in ("ok", "failure") for r in records)
