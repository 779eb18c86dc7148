"""Engine tests: real Flower processes (SuperLink, one SuperNode per site, TLS on loopback) train
a federated TrainingJob on three sites' Delta tables. Small data, 2 rounds."""

from __future__ import annotations

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

pytestmark = pytest.mark.timeout(1500)
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
