"""Backtests and reproduction on this machine, on real Spark and torch: a CPU training run is
trained again from what its artifact pins and reproduces its metrics within the stated
tolerance; a backtest on a shifted version of the evaluation Dataset appends a failing entry to
`status.evaluationHistory` and sets `Degraded`, while the version stays Approved."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from neuraxis.cli import app, mount
from neuraxis.lake import Lake
from neuraxis.local.backtest import backtest
from neuraxis.local.reproduce import TOLERANCE, reproduce
from neuraxis.local.runner import Outcome, Runner, load_entries
from neuraxis.local.state import LocalStore
from neuraxis.operator.inputs import CR_VERSION

pytestmark = pytest.mark.engine

# One Dataset for training and evaluation (one Spark run fewer); "shifted" is its next version
# with every label flipped (the concept changed), which no classifier of the old concept survives.
SHIFT = {
    "sql": "SELECT *, 1 - target AS zflipped FROM source",
    "renames": {"target": "original_target", "zflipped": "target"},
}


def _docs(transform: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    meta = {"apiVersion": CR_VERSION}
    source: dict[str, Any] = {"source": {"builtin": {"name": "breast-cancer"}}}
    return [
        {
            **meta,
            "kind": "Dataset",
            "metadata": {"name": "tumours"},
            "spec": {**source, **({"transform": transform} if transform else {})},
        },
        {
            **meta,
            "kind": "TrainingJob",
            "metadata": {"name": "diagnosis-train"},
            "spec": {
                "datasetRef": {"name": "tumours"},
                "validationSplit": 0.25,
                "task": {"type": "classification", "label": "target"},
                "model": {
                    "architecture": "mlp",
                    "epochs": 6,
                    "batchSize": 32,
                    "learningRate": 0.003,
                    "seed": 11,
                    "hyperparameters": {"hiddenSize": 16, "layers": 2},
                },
                "register": {"model": "diagnosis", "versionName": "diagnosis-v1"},
            },
        },
        {
            **meta,
            "kind": "ModelVersion",
            "metadata": {"name": "diagnosis-v1"},
            "spec": {
                "model": "diagnosis",
                "source": {"trainingJobRef": {"name": "diagnosis-train"}},
                "evaluation": {
                    "datasetRef": {"name": "tumours"},
                    "schedule": "0 6 * * *",
                    "gates": [{"metric": "accuracy", "min": 0.8}],
                },
            },
        },
    ]


def _write(folder: Path, docs: list[dict[str, Any]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, doc in enumerate(docs):
        (folder / f"{index:02d}-{doc['metadata']['name']}.yaml").write_text(yaml.safe_dump(doc))


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NEURAXIS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("NEURAXIS_LAKE_URI", raising=False)
    # Other commits may land in this checkout while the test runs: the code version is the one
    # named here for the training run and the reproduction alike.
    monkeypatch.setenv("NEURAXIS_GIT_COMMIT", "test-commit")
    return tmp_path / "home"


def _runner(home: Path) -> Runner:
    return Runner(Lake(str(home / "lake")), LocalStore(home / "state"))


def _run(folder: Path, home: Path) -> dict[str, Outcome]:
    return {f"{o.kind}/{o.name}": o for o in _runner(home).run(load_entries([folder], "default"))}


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status.get("conditions") or [] if c["type"] == type_)


def test_reproduce_and_backtest(home: Path, tmp_path: Path) -> None:
    mount()
    folder = tmp_path / "chain"
    _write(folder, _docs())
    first = _run(folder, home)
    phases = {k: o.phase for k, o in first.items()}
    assert phases["ModelVersion/diagnosis-v1"] == "Approved", {
        k: (o.phase, o.message) for k, o in first.items()
    }
    lake = Lake(str(home / "lake"))
    registered = first["TrainingJob/diagnosis-train"].status["artifact"]
    manifest_before = lake.read_bytes(f"{lake.relative(registered['uri'])}/manifest.json")

    # ---- reproduce: same data version, seed and code -> the same metrics ----
    outcome = reproduce(_runner(home), "default", "diagnosis-train")
    assert outcome.metrics and outcome.warnings == []
    for m in outcome.metrics:
        assert m.within, (m.metric, m.original, m.reproduced, m.diff)
    assert outcome.reproduced and TOLERANCE == 1e-4
    assert outcome.artifact_uri != registered["uri"]
    assert "/runs/" in outcome.artifact_uri
    after = lake.read_bytes(f"{lake.relative(registered['uri'])}/manifest.json")
    assert after == manifest_before, "the registered artifact changed"

    # The CLI prints the table and fails on a code version that differs.
    cli = CliRunner()
    ok = cli.invoke(app, ["reproduce", "trainingjob/diagnosis-train", "--tolerance", "1e-4"])
    assert ok.exit_code == 0, ok.output
    assert "val_loss" in ok.output and "Within tolerance" in ok.output
    moved = cli.invoke(
        app, ["reproduce", "trainingjob/diagnosis-train"], env={"NEURAXIS_GIT_COMMIT": "other"}
    )
    assert moved.exit_code == 1 and "code version differs" in moved.output, moved.output

    # ---- backtest on the same data: passes, Degraded False ----
    passed = backtest(_runner(home), "default", "diagnosis-v1")
    assert passed.entry["passed"] is True, passed.entry
    assert passed.entry["metrics"]["accuracy"] >= 0.8
    version_before = passed.entry["datasetVersion"]
    assert passed.entry["datasetDigest"].startswith("sha256:")
    assert _condition(passed.status, "Degraded")["status"] == "False"

    # ---- a new, shifted version of the evaluation Dataset: the backtest fails ----
    shifted_folder = tmp_path / "shifted"
    _write(shifted_folder, [_docs(SHIFT)[0]])  # the Dataset alone: nothing is retrained
    assert _run(shifted_folder, home)["Dataset/tumours"].phase == "Ready"
    failed = cli.invoke(app, ["backtest", "modelversion/diagnosis-v1"])
    assert failed.exit_code == 1, failed.output
    body = LocalStore(home / "state").get(CR_VERSION, "ModelVersion", "default", "diagnosis-v1")
    assert body is not None
    status = body["status"]
    assert status["phase"] == "Approved"  # a backtest never changes the phase
    history = status["evaluationHistory"]
    assert [e["passed"] for e in history] == [False, True]  # newest first
    assert history[0]["datasetVersion"] > version_before
    assert history[0]["datasetDigest"] != history[1]["datasetDigest"]
    assert history[0]["metrics"]["accuracy"] < 0.8
    degraded = _condition(status, "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "BacktestFailed"
    assert "accuracy" in degraded["message"] and "< min 0.8" in degraded["message"]
