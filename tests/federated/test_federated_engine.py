"""Engine tests: real Flower processes (SuperLink, one SuperNode per site, TLS on loopback) train
a federated TrainingJob on three sites' Delta tables. Small data, 2 rounds."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from neuraxis.crds.trainingjob import TrainingJob
from neuraxis.lake import Lake
from neuraxis.local.federated import run_federated
from neuraxis.workloads.federated.privacy import epsilon_after
from tests.train.conftest import NAMESPACE, write_delta

pytestmark = [pytest.mark.engine, pytest.mark.timeout(1500)]
SITES = ("hospital-a", "hospital-b", "hospital-c")


def write_sites(lake: Lake) -> None:
    """The breast-cancer rows split across three sites, skewed by label (non-IID)."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    order = np.argsort(data.target + np.random.default_rng(0).uniform(0, 1.5, len(data.target)))
    for i, rows in enumerate(np.array_split(order, 3)):
        columns = {f"f{j}": pa.array(data.data[rows, j]) for j in range(8)}
        columns["malignant"] = pa.array((1 - data.target[rows]).astype(np.int64))
        write_delta(lake, f"{SITES[i]}-records", pa.table(columns))


def federated_job(**federation: Any) -> TrainingJob:
    spec: dict[str, Any] = {
        "sites": [{"name": s, "datasetRef": {"name": f"{s}-records"}} for s in SITES],
        "rounds": 2,
        "minSites": 2,
        "privacy": {"mode": "central", "clippingNorm": 5.0, "noiseMultiplier": 0.3,
                    "targetEpsilon": 1000.0, "delta": 1e-5},
        "secureAggregation": {"enabled": True, "shares": 3, "threshold": 2},
        **federation,
    }  # fmt: skip
    return TrainingJob.model_validate(
        {
            "apiVersion": "neuraxis.dev/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {"name": "tumours"},
            "spec": {
                "task": {"type": "classification", "label": "malignant"},
                "model": {
                    "architecture": "mlp",
                    "hyperparameters": {"hiddenSize": 16},
                    "learningRate": 0.01,
                    "batchSize": 32,
                },
                "testSplit": 0.2,
                "federation": spec,
                "register": {"model": "tumour-classifier"},
            },
        }
    )


def test_three_sites_end_to_end_with_secagg_and_central_dp(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    write_sites(lake)
    job = federated_job()
    result = run_federated(job, lake, NAMESPACE, "fed-run-1", tmp_path / "run",
                           record_dir=str(tmp_path / "seen"))  # fmt: skip
    assert result["outcome"] == "Succeeded", result
    fed = result["federation"]
    assert fed["roundsCompleted"] == 2
    for r in fed["rounds"]:
        assert r["sitesActive"] == list(SITES) and r["sitesDropped"] == []
    assert fed["privacy"]["epsilonSpent"] == pytest.approx(epsilon_after(2, 0.3, 1.0, 1e-5))
    sites = result["lineage"]["sites"]
    assert [s["site"] for s in sites] == list(SITES)
    assert all(s["rounds"] == [1, 2] and s["datasetDigest"].startswith("sha256:") for s in sites)
    files = {
        p.name for p in Path(lake.local_path(lake.relative(result["artifact"]["uri"]))).iterdir()
    }
    assert {"model.ts", "signature.json", "model.pt"} <= files


def _true_round_one_updates(lake: Lake, job: TrainingJob) -> tuple[list[list[Any]], list[int]]:
    """What each site trains in round 1, recomputed here with the same code and inputs."""
    from neuraxis.workloads.federated import site as fs

    assert job.spec.federation is not None
    refs = [s.dataset_ref for s in job.spec.federation.sites]
    summaries = [fs.site_summary(fs.read_site_data(lake, NAMESPACE, job, r, None)) for r in refs]
    norm = fs.global_normalization(summaries)
    classes = fs.global_classes(job, summaries)
    model, _ = fs.build_global_model(job, len(summaries[0]["features"]), classes, norm)
    start = fs.get_arrays(model)
    updates, rows = [], []
    for ref in refs:
        data = fs.read_site_data(lake, NAMESPACE, job, ref, classes)
        arrays, n, _ = fs.train_round(job, data, start, norm, local_epochs=1, server_round=1)
        updates.append(arrays)
        rows.append(n)
    return updates, rows


def test_secagg_server_never_holds_a_site_update_in_the_clear(tmp_path: Path) -> None:
    from neuraxis.workloads.train.export import load_weights

    lake = Lake(str(tmp_path / "lake"))
    write_sites(lake)
    job = federated_job(rounds=1, privacy={"mode": "none"})
    seen = tmp_path / "seen"
    result = run_federated(job, lake, NAMESPACE, "fed-secagg", tmp_path / "run",
                           record_dir=str(seen))  # fmt: skip
    assert result["outcome"] == "Succeeded", result
    updates, rows = _true_round_one_updates(lake, job)
    flat = [np.concatenate([a.ravel() for a in u]).astype(np.float64) for u in updates]
    # The aggregate the server ended with is the row-weighted mean of the true updates.
    expected = sum(n * f for n, f in zip(rows, flat, strict=True)) / sum(rows)
    folder = Path(lake.local_path(lake.relative(result["artifact"]["uri"])))
    model, _ = load_weights((folder / "model.pt").read_bytes())
    final = np.concatenate([p.detach().numpy().ravel() for p in model.parameters()])
    np.testing.assert_allclose(final, expected, atol=1e-3)
    # Everything the server received in the training stages: no vector equals a true update.
    received = 0
    for path in sorted(seen.glob("*-train-*.npz")):
        with np.load(path) as npz:
            arrays = [npz[key].astype(np.float64).ravel() for key in npz.files]
        if not arrays or sum(a.size for a in arrays) < flat[0].size:
            continue  # a key-exchange stage: no parameters in it
        # SecAgg+'s masked reply: the masked weight, then the masked layers.
        vec = np.concatenate(arrays)[-flat[0].size :]
        received += 1
        for true in flat:
            assert np.abs(vec - true).max() > 0.1, path.name
    assert received >= 3, "the recorder saw no masked vectors"


def test_a_site_killed_mid_round_leaves_the_round_to_the_others(tmp_path: Path) -> None:
    from neuraxis.local.federated import federation, submit, wait_for_result

    lake = Lake(str(tmp_path / "lake"))
    write_sites(lake)
    job = federated_job(rounds=1, privacy={"mode": "none"})  # shares 3, threshold 2: 1 may drop
    with federation(job, lake, tmp_path / "run") as running:
        submit(running, job, NAMESPACE, "fed-dropout")
        log = running.folder / "supernode-hospital-c.log"
        # Kill the site when SecAgg+ asks for its masked update (the round's third message, after
        # setup and key sharing): its key shares are out, its update never arrives.
        while log.read_text(errors="replace").count("Receiving: train message") < 3:
            time.sleep(0.2)
        running.stop_site("hospital-c")
        result = wait_for_result(lake, NAMESPACE, "fed-dropout", running)
    assert result["outcome"] == "Succeeded", result
    (only,) = result["federation"]["rounds"]
    assert only["sitesActive"] == ["hospital-a", "hospital-b"]
    assert only["sitesDropped"] == ["hospital-c"]
    lineage = {s["site"]: s["rounds"] for s in result["lineage"]["sites"]}
    assert lineage == {"hospital-a": [1], "hospital-b": [1], "hospital-c": []}
