"""The edge agent serves only the bundle the EdgeDeployment pinned: another bundle at the URI
(rebuilt or swapped) is refused with ArtifactChanged, in the lake and in the cache, and the
agent process that cannot start says so in its termination message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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

from .conftest import TinyClassifier, write_model

pytestmark = pytest.mark.engine

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
