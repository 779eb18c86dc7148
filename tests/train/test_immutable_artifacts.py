"""Immutable versions: every training run writes its own artifact folder, the card is listed in
the manifest without moving the pinned digest, and a changed artifact is refused everywhere it
is loaded (evaluation, serving, bundle) with the reason ArtifactChanged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from neuraxis.crds.modelversion import ModelVersion
from neuraxis.lake import Lake
from neuraxis.resources import parse_resource
from neuraxis.workloads.artifact import (
    ARTIFACT_CHANGED,
    MANIFEST,
    ArtifactChangedError,
    artifact_digest,
    failure_reason,
    read_verified,
    verify_card,
)
from neuraxis.workloads.bundle.run import build_edge_bundle
from neuraxis.workloads.evaluate.heldout import folder_of
from neuraxis.workloads.evaluate.run import run_evaluation
from neuraxis.workloads.result import TERMINATION_LOG_ENV, read_compact_result
from neuraxis.workloads.serve.model_loader import ModelLoadError, load_model
from neuraxis.workloads.train.run import run_training

pytestmark = pytest.mark.engine

GATES = [{"metric": "accuracy", "min": 0.5}]


def _train(kit: Any, lake: Lake, run_id: str, epochs: int = 2) -> dict[str, Any]:
    spec = kit.job(
        model={"architecture": "mlp", "epochs": epochs, "learningRate": 0.02},
        register={"model": "detector", "versionName": "detector-v1"},
    )
    result = run_training(spec, lake, kit.namespace, run_id)
    assert result is not None
    return dict(result["artifact"])


def _version(kit: Any) -> ModelVersion:
    parsed = parse_resource(kit.model_version("detector-v1", GATES))
    assert isinstance(parsed, ModelVersion)
    return parsed


def _snapshot(lake: Lake, folder: str) -> dict[str, bytes]:
    root = lake.local_path(folder)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def test_retraining_writes_a_new_folder_and_leaves_the_evaluated_one_as_it_was(
    lake: Lake, kit: Any
) -> None:
    first = _train(kit, lake, "detector-train-0a1b2c3d-g1")
    folder = folder_of(lake, first["uri"])
    assert folder == "models/ml/detector/detector-v1/detector-train-0a1b2c3d-g1"
    evaluated = run_evaluation(
        _version(kit), lake, kit.namespace, "eval-1", artifact_uri=first["uri"]
    )
    assert evaluated["passed"] is True
    # The card is added after training, yet the digest evaluation pinned is training's.
    assert evaluated["artifact"] == {"uri": first["uri"], "digest": first["digest"]}
    assert artifact_digest(lake, folder) == first["digest"]
    before = _snapshot(lake, folder)
    assert "card/card.json" in before and "card/plots/roc.png" in before

    second = _train(kit, lake, "detector-train-0a1b2c3d-g2", epochs=3)  # the spec was edited
    assert second["uri"] != first["uri"] and second["digest"] != first["digest"]
    assert _snapshot(lake, folder) == before


def test_card_and_manifest_cover_each_other(lake: Lake, kit: Any) -> None:
    artifact = _train(kit, lake, "run-card")
    folder = folder_of(lake, artifact["uri"])
    run_evaluation(_version(kit), lake, kit.namespace, "eval-card", artifact_uri=artifact["uri"])
    manifest = lake.read_json(f"{folder}/{MANIFEST}")
    assert manifest["digest"] == artifact["digest"]
    assert not any(name.startswith("card/") for name in manifest["files"])
    listed = verify_card(lake, folder)
    assert {"card/card.json", "card/card.md", "card/plots/roc.png"} <= set(listed)
    assert manifest["card"]["artifactDigest"] == artifact["digest"]
    card = lake.read_json(f"{folder}/card/card.json")
    assert card["artifact"]["digest"] == artifact["digest"]
    path = lake.local_path(f"{folder}/card/card.md")
    path.write_bytes(path.read_bytes().replace(b"passed", b"PASSED"))
    with pytest.raises(ArtifactChangedError, match=r"card/card\.md: sha256 mismatch"):
        verify_card(lake, folder)


def test_the_card_says_which_rows_each_number_comes_from(lake: Lake, kit: Any) -> None:
    artifact = _train(kit, lake, "run-data")
    result = run_evaluation(
        _version(kit), lake, kit.namespace, "eval-data", artifact_uri=artifact["uri"]
    )
    data = result["evaluation"]["data"]
    assert (data["name"], data["version"], data["split"]) == ("features", 0, "test")
    assert data["description"] == "test split (20%) of features v0"
    folder = folder_of(lake, artifact["uri"])
    card = lake.read_json(f"{folder}/card/card.json")
    sources = {s["split"]: s for s in card["dataSources"]}
    assert set(sources) == {"test", "train", "validation"}
    assert sources["test"]["rows"] == data["rows"] > 0
    assert sum(s["rows"] for s in sources.values()) == 400  # every row, each in one split
    markdown = lake.read_bytes(f"{folder}/card/card.md").decode()
    assert f"| evaluation metrics, gates, plots | features | 0 | test | {data['rows']} |" in (
        markdown
    )


def test_a_changed_artifact_is_refused_with_artifact_changed(
    lake: Lake, kit: Any, tmp_path: Path
) -> None:
    artifact = _train(kit, lake, "run-tamper")
    folder = folder_of(lake, artifact["uri"])
    pinned = artifact["digest"]
    # A consistent swap: new weights and a manifest that matches them. The files verify
    # against their manifest; only the pinned digest tells.
    other = _train(kit, lake, "run-other", epochs=3)
    for name in ("model.pt", "model.ts", "signature.json", MANIFEST):
        src = lake.local_path(f"{folder_of(lake, other['uri'])}/{name}")
        lake.local_path(f"{folder}/{name}").write_bytes(src.read_bytes())
    read_verified(lake, folder)  # self-consistent
    with pytest.raises(ArtifactChangedError, match="is not the pinned") as info:
        run_evaluation(
            _version(kit),
            lake,
            kit.namespace,
            "eval-tamper",
            artifact_uri=artifact["uri"],
            expected_digest=pinned,
        )
    assert failure_reason(info.value, "EvaluationFailed") == ARTIFACT_CHANGED
    with pytest.raises(ArtifactChangedError):
        build_edge_bundle(
            lake,
            kit.namespace,
            "detector",
            "detector-v1",
            "bundle-t",
            source_folder=folder,
            expected_digest=pinned,
        )
    with pytest.raises(ModelLoadError) as refused:
        load_model(artifact["uri"], expected_digest=pinned)
    assert refused.value.reason == ARTIFACT_CHANGED
    # The server process: exit 2, and its termination message says ArtifactChanged (what the
    # operator reads from a predictor pod, and `neuraxis run` from its smoke test).
    term = tmp_path / "termination-log"
    command = [
        sys.executable, "-m", "neuraxis.cli", "workload", "serve",
        "--model", artifact["uri"], "--digest", pinned, "--port", "0",
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
    assert pinned in reported["message"]


def test_a_tampered_file_is_artifact_changed(lake: Lake, kit: Any) -> None:
    artifact = _train(kit, lake, "run-file")
    folder = folder_of(lake, artifact["uri"])
    path = lake.local_path(f"{folder}/model.ts")
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ModelLoadError) as refused:
        load_model(artifact["uri"], expected_digest=artifact["digest"])
    assert refused.value.reason == ARTIFACT_CHANGED
    assert "model.ts: sha256 mismatch" in str(refused.value)
    assert (
        json.loads(lake.local_path(f"{folder}/{MANIFEST}").read_text())["digest"]
        == (artifact["digest"])
    )
