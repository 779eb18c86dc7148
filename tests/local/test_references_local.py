"""`neuraxis run` applies the operator's reference rule: a derived Dataset reading another
namespace's Dataset waits with ReferenceNotPermitted until that Dataset grants the reader's
namespace, then reads its table (real Spark, real Delta)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from neuraxis.lake import Lake
from neuraxis.local.runner import Outcome, Runner, load_entries
from neuraxis.local.state import LocalStore
from neuraxis.references import GRANT_ANNOTATION, REFERENCE_NOT_PERMITTED

pytestmark = pytest.mark.engine


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NEURAXIS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("NEURAXIS_LAKE_URI", raising=False)
    return tmp_path / "home"


def _write(folder: Path, doc: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "01.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return folder


def _dataset(name: str, spec: dict[str, Any], annotations: dict[str, str] | None = None) -> Any:
    meta: dict[str, Any] = {"name": name}
    if annotations:
        meta["annotations"] = annotations
    return {
        "apiVersion": "neuraxis.dev/v1alpha1",
        "kind": "Dataset",
        "metadata": meta,
        "spec": spec,
    }


def _run(home: Path, folder: Path, namespace: str) -> Outcome:
    runner = Runner(Lake(str(home / "lake")), LocalStore(home / "state"))
    [outcome] = runner.run(load_entries([folder], namespace))
    return outcome


def test_cross_namespace_upstream_needs_a_grant(home: Path, tmp_path: Path) -> None:
    shared_spec = {"source": {"builtin": {"name": "sensors", "rows": 200, "seed": 2}}}
    team_b = _write(tmp_path / "team-b", _dataset("shared", shared_spec))
    assert _run(home, team_b, "team-b").phase == "Ready"

    derived = {
        "source": {"from": {"datasetRef": {"name": "shared", "namespace": "team-b"}}},
        "transform": {"sql": "SELECT machine_id, temperature FROM source"},
    }
    team_a = _write(tmp_path / "team-a", _dataset("mine", derived))
    refused = _run(home, team_a, "team-a")
    assert (refused.phase, refused.reason) == ("Pending", REFERENCE_NOT_PERMITTED)
    assert (
        "spec.source.from.datasetRef: Dataset shared is in namespace team-b, not team-a"
        in refused.message
    )
    assert not Lake(str(home / "lake")).exists("tables/team-a/mine/_delta_log")

    # The owner grants team-a (in its own file, as it would `kubectl annotate`).
    _write(team_b, _dataset("shared", shared_spec, {GRANT_ANNOTATION: "team-a"}))
    _run(home, team_b, "team-b")
    granted = _run(home, team_a, "team-a")
    assert granted.phase == "Ready", granted.message
    assert granted.status["rows"] == 200
    assert granted.status["lineage"]["inputs"][0]["uri"].endswith("tables/team-b/shared")

    # Unchanged: skipped. A new version of the granted upstream: read again.
    assert _run(home, team_a, "team-a").reason == "Unchanged"
    bigger = {"source": {"builtin": {"name": "sensors", "rows": 300, "seed": 2}}}
    _write(team_b, _dataset("shared", bigger, {GRANT_ANNOTATION: "team-a"}))
    assert _run(home, team_b, "team-b").phase == "Ready"
    again = _run(home, team_a, "team-a")
    assert (again.phase, again.status["rows"]) == ("Ready", 300), again.message
