"""`neuraxis run` end to end on real Spark, torch, Ray, Flower and the real serving process, at
small sizes: the examples, lineage, incremental reruns, and a broken resource in the directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from neuraxis.lake import Lake
from neuraxis.local.lineage import build, chain, to_mermaid, to_png
from neuraxis.local.runner import Outcome, Runner, load_entries
from neuraxis.local.state import LocalStore
from neuraxis.operator.inputs import CR_VERSION
from tests.conftest import EXAMPLES

pytestmark = pytest.mark.engine


def _copy_example(name: str, dest: Path, shrink: dict[str, Any]) -> Path:
    """The example with smaller sizes (rows, epochs, trials) so CI runs it in minutes."""
    out = dest / name
    out.mkdir(parents=True)
    for file in sorted((EXAMPLES / name).glob("0*.yaml")):
        doc = yaml.safe_load(file.read_text())
        for path, value in shrink.get(doc["metadata"]["name"], {}).items():
            node = doc["spec"]
            *parents, last = path.split(".")
            for key in parents:
                node = node[key]
            node[last] = value
        (out / file.name).write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NEURAXIS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NEURAXIS_SECRET_LAKE_SALT_SALT", "test-salt")
    # The manufacturing example's spec.serving.auth: one API key, as `make demo` sets it.
    monkeypatch.setenv("NEURAXIS_SECRET_ANOMALY_DETECTOR_API_KEYS_CI", "test-api-key")
    monkeypatch.delenv("NEURAXIS_LAKE_URI", raising=False)
    return tmp_path / "home"


def _run(folder: Path, home: Path, force: bool = False) -> dict[str, Outcome]:
    runner = Runner(Lake(str(home / "lake")), LocalStore(home / "state"), force=force)
    outcomes = runner.run(load_entries([folder], "default"))
    return {f"{o.kind}/{o.name}": o for o in outcomes}


def _phases(outcomes: dict[str, Outcome]) -> dict[str, str]:
    return {key: o.phase for key, o in outcomes.items()}


def _follow_card_to_dataset(home: Path, model_version: dict[str, Any]) -> dict[str, Any]:
    """From a ModelVersion's card to its Dataset's recorded status: the card names the dataset
    version and digest, and they are the status's (one digest). The Dataset status."""
    lake = Lake(str(home / "lake"))
    card_json = lake.relative(model_version["cardUri"]).rsplit("/", 1)[0] + "/card.json"
    seen = lake.read_json(card_json)["lineage"]["dataset"]
    body = LocalStore(home / "state").get(CR_VERSION, "Dataset", "default", seen["name"])
    assert body is not None, seen
    status = body["status"]
    assert seen["version"] == status["version"]
    assert seen["digest"] == status["table"]["digest"] == status["lineage"]["datasetDigest"]
    assert str(seen["digest"]).startswith("sha256:")
    return dict(status)


def test_healthcare_chain_lineage_and_rerun(home: Path, tmp_path: Path) -> None:
    folder = _copy_example("smart-healthcare", tmp_path, {"diagnosis-train": {"model.epochs": 8}})
    first = _run(folder, home)
    assert _phases(first) == {
        "Dataset/tumour-measurements": "Ready",
        "TrainingJob/diagnosis-train": "Succeeded",
        "ModelVersion/diagnosis-v1": "Approved",
        "EdgeDeployment/diagnosis-clinic": "Available",
    }, {k: (o.reason, o.message) for k, o in first.items()}
    assert first["Dataset/tumour-measurements"].status["rows"] == 569
    mv = first["ModelVersion/diagnosis-v1"].status
    assert mv["evaluation"]["metrics"]["accuracy"] >= 0.9
    smoke = next(c for c in mv["conditions"] if c["type"] == "ServingSmokeTest")
    assert smoke["status"] == "True", smoke

    store = LocalStore(home / "state")
    root = build(store, "EdgeDeployment", "diagnosis-clinic", "default")
    kinds = [n.kind for n in chain(root)]
    assert kinds == ["EdgeDeployment", "ModelVersion", "TrainingJob", "Dataset", "Source"]
    dataset = first["Dataset/tumour-measurements"].status
    tj = first["TrainingJob/diagnosis-train"].status
    assert tj["lineage"]["datasetVersion"] == dataset["version"]
    assert "builtin:breast-cancer" in to_mermaid(root)
    assert to_png(root, tmp_path / "lineage.png").stat().st_size > 1000
    card = Lake(str(home / "lake"))
    assert "Dataset" in card.read_bytes(card.relative(mv["cardUri"])).decode()
    assert _follow_card_to_dataset(home, mv) == dataset
    assert tj["lineage"]["datasetDigest"] == dataset["table"]["digest"]
    # The status as promised: the schema, each expectation's result, the lineage inputs.
    assert "mean_radius" in {c["name"] for c in dataset["schema"]}
    assert [(q["rule"], q["passed"], q["failedRows"]) for q in dataset["quality"]] == [
        ("notNull", True, 0),
        ("allowedValues", True, 0),
        ("range", True, 0),
        ("rowCount", True, 0),
    ]
    assert dataset["lineage"]["inputs"] == [{"uri": "builtin://breast-cancer"}]

    second = _run(folder, home)
    assert all(o.skipped for o in second.values()), _phases(second)


def test_manufacturing_chain_with_tuning_and_masking(home: Path, tmp_path: Path) -> None:
    expectations = [{"rule": "notNull", "column": "machine_id"}, {"rule": "rowCount", "min": 100}]
    shrink = {
        "sensor-readings": {"source.builtin.rows": 1500, "quality.expectations": expectations},
        "anomaly-detector-train": {"model.epochs": 2, "tuning.maxTrials": 2},
    }
    folder = _copy_example("smart-manufacturing", tmp_path, shrink)
    outcomes = _run(folder, home)
    assert _phases(outcomes) == {
        "Dataset/sensor-readings": "Ready",
        "Dataset/sensor-features": "Ready",
        "TrainingJob/anomaly-detector-train": "Succeeded",
        "ModelVersion/anomaly-detector-v1": "Approved",
        "EdgeDeployment/anomaly-detector-plants": "Available",
    }, {k: (o.reason, o.message) for k, o in outcomes.items()}
    mv = outcomes["ModelVersion/anomaly-detector-v1"].status
    smoke = next(c for c in mv["conditions"] if c["type"] == "ServingSmokeTest")
    assert "API key ci accepted, none refused 401" in smoke["message"], smoke
    tj = outcomes["TrainingJob/anomaly-detector-train"].status
    assert tj["bestTrial"]["id"] and tj["modelVersion"] == "anomaly-detector-v1"
    features = outcomes["Dataset/sensor-features"].status
    assert tj["lineage"] == {
        **tj["lineage"],
        "dataset": "sensor-features",
        "datasetVersion": features["version"],
    }
    readings = outcomes["Dataset/sensor-readings"].status
    assert _follow_card_to_dataset(home, outcomes["ModelVersion/anomaly-detector-v1"].status) == (
        features
    )
    # A Ready Dataset's status: the schema with PII tags, each expectation with its failed rows,
    # and the lineage inputs with their versions and digests.
    columns = {c["name"]: c for c in readings["schema"]}
    assert columns["operator_email"]["pii"] == ["email", "person"]
    assert columns["temperature"] == {"name": "temperature", "type": "double", "pii": []}
    by_rule = {(q["rule"], q.get("column")): q for q in readings["quality"]}
    assert set(by_rule) == {("notNull", "machine_id"), ("rowCount", None)}
    assert by_rule[("notNull", "machine_id")]["failedRows"] > 0
    assert (
        not by_rule[("notNull", "machine_id")]["passed"] and by_rule[("rowCount", None)]["passed"]
    )
    assert readings["lineage"]["inputs"] == [{"uri": "builtin://sensors?rows=1500&seed=7"}]
    assert features["lineage"]["inputs"] == [
        {
            "uri": readings["table"]["uri"],
            "dataset": "sensor-readings",
            "version": readings["version"],
            "digest": readings["table"]["digest"],
        }
    ]
    assert "truncated" not in readings and "truncated" not in features
    root = build(LocalStore(home / "state"), "EdgeDeployment", "anomaly-detector-plants", "default")
    assert [n.kind for n in chain(root)] == [
        "EdgeDeployment", "ModelVersion", "TrainingJob", "Dataset", "Dataset", "Source",
    ]  # fmt: skip
    assert f"read Dataset sensor-readings version {readings['version']}" in to_mermaid(root)


def test_federated_hospitals_example(home: Path, tmp_path: Path) -> None:
    """Three hospitals' masked Datasets, Flower on loopback with SecAgg+ and central DP until the
    epsilon budget stops it, the gates on held-out patients, the bundle, and the lineage down
    each site to its Dataset version."""
    from deltalake import DeltaTable

    from neuraxis.workloads.federated.privacy import epsilon_after

    folder = _copy_example("federated-hospitals", tmp_path, {})
    outcomes = _run(folder, home)
    sites = ("hospital-a", "hospital-b", "hospital-c")
    assert _phases(outcomes) == {
        **{f"Dataset/{s}-records": "Ready" for s in sites},
        "Dataset/tumour-holdout": "Ready",
        "TrainingJob/tumour-federated": "Succeeded",
        "ModelVersion/tumour-classifier-v1": "Approved",
        "EdgeDeployment/tumour-classifier-hospitals": "Available",
    }, {k: (o.reason, o.message) for k, o in outcomes.items()}
    lake = Lake(str(home / "lake"))
    # Masked, disjoint, and together every patient once.
    ids: list[set[str]] = []
    for name in [f"{s}-records" for s in sites] + ["tumour-holdout"]:
        status = outcomes[f"Dataset/{name}"].status
        assert {c["name"]: c["pii"] for c in status["schema"]}["patient_id"] == ["person"]
        rows = DeltaTable(status["table"]["uri"]).to_pyarrow_table().column("patient_id")
        ids.append(set(rows.to_pylist()))
        assert len(ids[-1]) == len(rows) == status["rows"]
        assert not any(str(v).startswith("MRN-") for v in ids[-1])  # hashed, not clear
    assert sum(len(i) for i in ids) == len(set().union(*ids)) == 569
    # The budget: 5 rounds asked, epsilon 20 allows 2 at noise multiplier 0.5.
    tj = outcomes["TrainingJob/tumour-federated"]
    assert tj.reason == "BudgetExhausted", (tj.reason, tj.message)
    fed = tj.status["federation"]
    assert fed["roundsCompleted"] == 2
    assert fed["privacy"]["epsilonSpent"] == pytest.approx(epsilon_after(2, 0.5, 1.0, 1e-5))
    for r in fed["rounds"]:
        assert r["sitesActive"] == list(sites) and r["sitesDropped"] == []
        assert r["metrics"]["roundSeconds"] > r["metrics"]["trainSecondsMax"] > 0
    by_site = {s["site"]: s for s in tj.status["lineage"]["sites"]}
    for site in sites:
        table = outcomes[f"Dataset/{site}-records"].status
        assert by_site[site]["datasetDigest"] == table["table"]["digest"]
        assert by_site[site]["datasetVersion"] == table["version"]
        assert by_site[site]["rounds"] == [1, 2]
    mv = outcomes["ModelVersion/tumour-classifier-v1"].status
    assert mv["evaluation"]["metrics"]["accuracy"] >= 0.8
    # The bundle weighed int8 against fp32 on the same held-out patients as the gates.
    bundle = outcomes["EdgeDeployment/tumour-classifier-hospitals"].status["bundle"]
    compression = lake.read_json(lake.relative(bundle["uri"]) + "/compression.json")
    assert "tumour-holdout" in compression["heldOut"], compression
    root = build(LocalStore(home / "state"), "EdgeDeployment", "tumour-classifier-hospitals",
                 "default")  # fmt: skip
    nodes = chain(root)
    assert [n.name for n in nodes if n.kind == "Site"] == list(sites)
    assert sorted(n.name for n in nodes if n.kind == "Dataset") == [f"{s}-records" for s in sites]
    assert to_png(root, tmp_path / "lineage.png").stat().st_size > 1000


def test_broken_resource_stops_dependents_only(home: Path, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()

    def dataset(name: str, spec: dict[str, Any]) -> dict[str, Any]:
        meta = {"name": name}
        return {
            "apiVersion": "neuraxis.dev/v1alpha1",
            "kind": "Dataset",
            "metadata": meta,
            "spec": spec,
        }

    docs = [
        dataset("raw", {"source": {"builtin": {"name": "sensors"}}, "engine": {"executors": -1}}),
        dataset("derived", {"source": {"from": {"datasetRef": {"name": "raw"}}}}),
        dataset("independent", {"source": {"builtin": {"name": "breast-cancer"}}}),
    ]
    (folder / "all.yaml").write_text(yaml.safe_dump_all(docs))
    outcomes = _run(folder, home)
    broken = outcomes["Dataset/raw"]
    assert (broken.phase, broken.reason) == ("Failed", "InvalidSpec")
    assert "spec.engine.executors: Invalid value: -1" in broken.message
    blocked = outcomes["Dataset/derived"]
    assert (blocked.phase, blocked.reason) == ("Pending", "WaitingForDataset")
    assert "Dataset raw is Failed" in blocked.message
    assert outcomes["Dataset/independent"].phase == "Ready"
