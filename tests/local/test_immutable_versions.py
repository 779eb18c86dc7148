"""`neuraxis run` keeps Approved versions immutable: editing the TrainingJob and running again
writes a new artifact folder and leaves the first version's files as they were; a file changed
under an Approved version makes it Failed with reason ArtifactChanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from neuraxis.lake import Lake
from neuraxis.local.runner import Outcome, Runner, load_entries
from neuraxis.local.state import LocalStore
from tests.conftest import EXAMPLES

pytestmark = pytest.mark.engine

CHAIN = ("01-tumour-measurements.yaml", "02-diagnosis-train.yaml", "03-diagnosis-v1.yaml")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NEURAXIS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NEURAXIS_SECRET_LAKE_SALT_SALT", "test-salt")
    monkeypatch.delenv("NEURAXIS_LAKE_URI", raising=False)
    return tmp_path / "home"


def _write_chain(folder: Path, epochs: int) -> None:
    """The healthcare chain up to the ModelVersion, with `epochs` for the TrainingJob."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in CHAIN:
        doc = yaml.safe_load((EXAMPLES / "smart-healthcare" / name).read_text())
        if doc["kind"] == "TrainingJob":
            doc["spec"]["model"]["epochs"] = epochs
        (folder / name).write_text(yaml.safe_dump(doc, sort_keys=False))


def _run(folder: Path, home: Path) -> dict[str, Outcome]:
    runner = Runner(Lake(str(home / "lake")), LocalStore(home / "state"))
    return {f"{o.kind}/{o.name}": o for o in runner.run(load_entries([folder], "default"))}


def _files(lake: Lake, uri: str) -> dict[str, bytes]:
    root = lake.local_path(lake.relative(uri))
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_retraining_never_changes_an_approved_version_and_tampering_fails_it(
    home: Path, tmp_path: Path
) -> None:
    lake = Lake(str(home / "lake"))
    folder = tmp_path / "chain"
    _write_chain(folder, epochs=8)
    first = _run(folder, home)["ModelVersion/diagnosis-v1"]
    assert first.phase == "Approved", first.message
    pinned = first.status["artifact"]
    assert pinned["digest"].startswith("sha256:")
    assert "/models/default/diagnosis/diagnosis-v1/diagnosis-train-" in pinned["uri"]
    before = _files(lake, pinned["uri"])
    assert {"model.pt", "model.ts", "manifest.json", "card/card.json"} <= set(before)

    _write_chain(folder, epochs=9)  # the TrainingJob spec is edited
    second = _run(folder, home)
    assert second["TrainingJob/diagnosis-train"].reason == "Succeeded"
    again = second["ModelVersion/diagnosis-v1"]
    assert again.phase == "Approved", again.message
    assert again.status["artifact"]["uri"] != pinned["uri"]
    assert again.status["artifact"]["digest"] != pinned["digest"]
    assert _files(lake, pinned["uri"]) == before  # not one byte of the first version moved

    current = lake.local_path(f"{lake.relative(again.status['artifact']['uri'])}/model.ts")
    current.write_bytes(current.read_bytes() + b"\0")
    third = _run(folder, home)["ModelVersion/diagnosis-v1"]
    assert (third.phase, third.reason) == ("Failed", "ArtifactChanged"), third.message
    assert "model.ts: sha256 mismatch" in third.message
    ready = next(c for c in third.status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ArtifactChanged")
