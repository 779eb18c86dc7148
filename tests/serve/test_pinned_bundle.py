"""The edge agent serves only the bundle the EdgeDeployment pinned: another bundle at the URI
(rebuilt, swapped or forged with a self-consistent manifest) is refused with ArtifactChanged,
in the lake and in the cache, the serving agent keeps its model, and the agent process that
cannot start says so in its termination message."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from neuraxis.lake import Lake
from neuraxis.workloads.artifact import ARTIFACT_CHANGED
from neuraxis.workloads.edge.agent import (
    AgentConfig,
    AgentStartError,
    BundleRefusedError,
    EdgeAgent,
    fetch_bundle,
)
from neuraxis.workloads.result import TERMINATION_LOG_ENV, read_compact_result
from neuraxis.workloads.serve.metrics import ServeMetrics

from .conftest import TinyClassifier, load_scripted, metric_value, write_model

if TYPE_CHECKING:
    from tests.serve.conftest import StartServer

pytestmark = pytest.mark.engine

EDGE = "neuraxis.workloads.edge"
REFUSALS = "neuraxis_edge_bundle_refusals_total"
FOLDER = "edge/default/tiny/v1/bundle-run-1"
OTHER = "sha256:" + "0" * 64


def _config(lake_dir: Path, cache: Path, expected: str) -> AgentConfig:
    return AgentConfig(
        bundle_uri=f"file://{lake_dir}/{FOLDER}",
        cache_dir=cache,
        lake_root=f"file://{lake_dir}",
        log_prefix="inference-logs/default/tiny/n1",
        node="n1",
        model_name="tiny",
        expected_digest=expected,
    )


def test_only_the_pinned_bundle_is_fetched_and_started(tmp_path: Path) -> None:
    lake_dir = tmp_path / "lake"
    ref = write_model(Lake(str(lake_dir)), FOLDER, TinyClassifier(seed=1), "v1", quantize=True)
    uri = f"file://{lake_dir}/{FOLDER}"
    fetched = fetch_bundle(uri, None, expected_digest=ref.digest)
    assert fetched is not None and fetched.digest == ref.digest
    with pytest.raises(BundleRefusedError, match=f"{ARTIFACT_CHANGED}: .*is not the pinned"):
        fetch_bundle(uri, None, expected_digest=OTHER)

    started = EdgeAgent(_config(lake_dir, tmp_path / "ok", ref.digest), ServeMetrics())
    assert started.initial_model().digest == ref.digest
    # The cache now holds the bundle; a pin to another digest refuses it there too.
    refused = EdgeAgent(_config(lake_dir, tmp_path / "ok", OTHER), ServeMetrics())
    with pytest.raises(AgentStartError) as info:
        refused.initial_model()
    assert info.value.reason == ARTIFACT_CHANGED
    assert f"is not the pinned {OTHER}" in str(info.value)


def test_the_agent_process_reports_artifact_changed(tmp_path: Path) -> None:
    lake_dir = tmp_path / "lake"
    write_model(Lake(str(lake_dir)), FOLDER, TinyClassifier(seed=1), "v1", quantize=True)
    term = tmp_path / "termination-log"
    command = [
        sys.executable, "-m", "neuraxis.cli", "workload", "edge",
        "--bundle", f"file://{lake_dir}/{FOLDER}", "--cache-dir", str(tmp_path / "cache"),
        "--node", "n1", "--digest", OTHER, "--port", "0",
    ]  # fmt: skip
    proc = subprocess.run(
        command,
        env={**os.environ, TERMINATION_LOG_ENV: str(term)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    reported = read_compact_result(term.read_text())
    assert reported is not None
    assert (reported["outcome"], reported["reason"]) == ("Failed", ARTIFACT_CHANGED)


def test_a_forged_bundle_with_a_rehashed_manifest_is_refused_while_serving(
    start_server: StartServer, tmp_path: Path
) -> None:
    """The attack the manifest alone cannot stop: someone who can write the bundle URI puts a
    different model there with a manifest re-hashed to match it. Every file verifies against
    that manifest; only the pinned digest tells it apart."""
    lake_dir = tmp_path / "lake"
    lake = Lake(str(lake_dir))
    genuine = write_model(lake, FOLDER, TinyClassifier(seed=1), "v1", quantize=True)
    rows = [[70.0, 0.5, 1.0], [95.0, 0.9, 1.3]]
    expected = load_scripted(lake.read_bytes(f"{FOLDER}/model.ts"))(torch.tensor(rows))
    args = [
        "--bundle", f"file://{lake_dir}/{FOLDER}", "--node", "n1", "--digest", genuine.digest,
        "--check-interval-s", "0.2", "--sync-interval-s", "3600",
    ]  # fmt: skip
    agent = start_server(EDGE, *args, "--cache-dir", str(tmp_path / "node"))

    forged = write_model(lake, FOLDER, TinyClassifier(seed=7), "v1", quantize=True)
    assert forged.digest != genuine.digest
    # Self-consistent: the forged files verify against the forged manifest.
    assert fetch_bundle(f"file://{lake_dir}/{FOLDER}", None).digest == forged.digest  # type: ignore[union-attr]

    def refused() -> bool:
        text = agent.metrics()
        return (metric_value(text, REFUSALS, reason=ARTIFACT_CHANGED) or 0) >= 1

    deadline = time.monotonic() + 60
    while not refused():
        assert time.monotonic() < deadline, "the forged bundle was never refused"
        time.sleep(0.1)
    log = agent.output()
    assert f"digest {forged.digest} is not the pinned {genuine.digest}" in log
    assert ARTIFACT_CHANGED in log
    response = agent.client.post("/v1/models/tiny:predict", json={"instances": rows})
    assert response.status_code == 200
    assert torch.allclose(torch.tensor(response.json()["probabilities"]), expected, atol=1e-6)
    assert metric_value(agent.metrics(), "neuraxis_serve_model_info", digest=genuine.digest) == 1
    agent.stop()

    # A restart with the forgery still in the lake serves the pinned bundle from the cache; a
    # node that never had it does not start and says why.
    restarted = start_server(EDGE, *args, "--cache-dir", str(tmp_path / "node"))
    response = restarted.client.post("/v1/models/tiny:predict", json={"instances": rows})
    assert torch.allclose(torch.tensor(response.json()["probabilities"]), expected, atol=1e-6)
    fresh = start_server(EDGE, *args, "--cache-dir", str(tmp_path / "fresh"), ready=False)
    assert fresh.proc.wait(120) == 2
    assert f"{ARTIFACT_CHANGED}: " in fresh.output() and "no cached bundle" in fresh.output()


def test_refusals_are_counted_by_reason(tmp_path: Path) -> None:
    lake_dir = tmp_path / "lake"
    lake = Lake(str(lake_dir))
    ref = write_model(lake, FOLDER, TinyClassifier(seed=1), "v1", quantize=True)
    EdgeAgent(_config(lake_dir, tmp_path / "node", ref.digest), ServeMetrics()).initial_model()
    # The pinned manifest stays, a file under it changes: Tampered, served from the cache.
    lake.write_bytes(f"{FOLDER}/signature.json", b"{}")
    metrics = ServeMetrics()
    started = EdgeAgent(_config(lake_dir, tmp_path / "node", ref.digest), metrics)
    assert started.initial_model().digest == ref.digest
    text = metrics.exposition().decode()
    assert metric_value(text, REFUSALS, reason="Tampered") == 1.0
    assert metric_value(text, REFUSALS, reason=ARTIFACT_CHANGED) is None
