"""examples/edge-retrain end to end under `neuraxis run` with a local lake: train and bundle v1,
serve the clinic's cases from a real edge agent, which uploads its logs on shutdown; then the
edge-logs Datasets (all cases joined with the confirmed diagnoses, and the hard examples) and a
TrainingJob that retrains from them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from neuraxis.lake import Lake
from neuraxis.local.runner import Outcome, Runner, load_entries
from neuraxis.local.state import LocalStore
from tests.conftest import EXAMPLES

if TYPE_CHECKING:
    from tests.serve.conftest import StartServer

pytestmark = pytest.mark.engine

EDGE = "neuraxis.workloads.edge"
SHRINK = {"triage-train": 8, "triage-retrain": 8}  # epochs: minutes, not tens of minutes


def copy_example(dest: Path) -> Path:
    folder = dest / "edge-retrain"
    shutil.copytree(EXAMPLES / "edge-retrain", folder)
    for file in folder.glob("0*.yaml"):
        doc = yaml.safe_load(file.read_text())
        if doc["metadata"]["name"] in SHRINK:
            doc["spec"]["model"]["epochs"] = SHRINK[doc["metadata"]["name"]]
            file.write_text(yaml.safe_dump(doc, sort_keys=False))
    return folder


def run(paths: list[Path], home: Path) -> dict[str, Outcome]:
    runner = Runner(Lake(str(home / "lake")), LocalStore(home / "state"))
    outcomes = runner.run(load_entries(paths, "default"))
    return {f"{o.kind}/{o.name}": o for o in outcomes}


def test_edge_logs_become_a_dataset_and_retrain_the_model(
    start_server: StartServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("NEURAXIS_HOME", str(home))
    monkeypatch.delenv("NEURAXIS_LAKE_URI", raising=False)
    folder = copy_example(tmp_path)
    monkeypatch.chdir(folder)  # the feedback file's path in 05-clinic-cases.yaml is relative

    serve_stage = sorted(folder.glob("0[1-4]-*.yaml"))
    first = run(serve_stage, home)
    assert {k: o.phase for k, o in first.items()} == {
        "Dataset/clinic-measurements": "Ready",
        "TrainingJob/triage-train": "Succeeded",
        "ModelVersion/triage-v1": "Approved",
        "EdgeDeployment/triage-clinic": "Available",
    }, {k: (o.reason, o.message) for k, o in first.items()}
    bundle = first["EdgeDeployment/triage-clinic"].status["bundle"]

    # The clinic's gateway: a real agent on the bundle, as the DaemonSet runs it.
    agent = start_server(
        EDGE,
        *["--bundle", bundle["uri"], "--digest", bundle["digest"]],
        *["--cache-dir", str(tmp_path / "gateway"), "--deployment", "triage-clinic"],
        *["--node", "gw-1", "--hard-example-threshold", "0.95"],
        env={"NEURAXIS_EDGE_SITE": "clinic-north"},
    )
    cases = [json.loads(line) for line in (folder / "feedback/confirmed-diagnoses.jsonl").open()]
    instances = [{k: v for k, v in case.items() if k != "target"} for case in cases]
    response = agent.client.post("/v1/models/triage:predict", json={"instances": instances})
    assert response.status_code == 200, response.text
    hard = sum(1 for p in response.json()["probabilities"] if max(p) < 0.95)
    agent.stop()  # the shutdown sync uploads the logs

    second = run([folder], home)
    phases = {k: o.phase for k, o in second.items()}
    assert phases["Dataset/clinic-cases"] == "Ready", second["Dataset/clinic-cases"].message
    assert phases["TrainingJob/triage-retrain"] == "Succeeded", second[
        "TrainingJob/triage-retrain"
    ].message
    cases_status: dict[str, Any] = second["Dataset/clinic-cases"].status
    assert cases_status["rows"] == len(cases)  # every served case found its confirmed label
    [source] = cases_status["lineage"]["inputs"]
    assert (source["edgeDeployment"], source["version"]) == ("triage-clinic", 0)
    hard_status = second["Dataset/clinic-hard-cases"].status
    assert second["Dataset/clinic-hard-cases"].phase == "Ready", hard_status
    assert hard_status["rows"] == hard
    retrain = second["TrainingJob/triage-retrain"].status
    assert retrain["lineage"]["dataset"] == "clinic-cases"
