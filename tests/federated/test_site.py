"""Site-side pieces without Flower: pooled normalisation, local DP clipping, the result mapping."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from neuraxis.operator.outcomes import add_federation, training_outcome
from neuraxis.workloads.federated.client_app import clip_and_noise
from neuraxis.workloads.federated.site import global_normalization
from neuraxis.workloads.federation_contract import BUDGET_EXHAUSTED


def _summary(x: np.ndarray[Any, Any]) -> dict[str, Any]:
    return {"rows": len(x), "sum": x.sum(0).tolist(), "sumsq": (x * x).sum(0).tolist()}


def test_pooled_normalization_equals_the_union_of_the_sites_rows() -> None:
    rng = np.random.default_rng(1)
    parts = [
        rng.normal(loc, scale, size=(n, 3))
        for loc, scale, n in ((0, 1, 40), (5, 2, 7), (-3, 0.5, 90))
    ]
    norm = global_normalization([_summary(p) for p in parts])
    union = np.concatenate(parts)
    np.testing.assert_allclose(norm.mean, union.mean(0), rtol=1e-9)
    np.testing.assert_allclose(norm.std, union.std(0), rtol=1e-9)


def test_local_dp_clips_the_update_to_the_norm_before_noise() -> None:
    start = [np.zeros(4, dtype=np.float32), np.zeros((2, 2), dtype=np.float32)]
    update = [np.full(4, 3.0, dtype=np.float32), np.full((2, 2), 4.0, dtype=np.float32)]
    clipped = clip_and_noise(update, start, clipping_norm=1.0, noise_multiplier=1e-9, seed=0)
    norm = np.sqrt(sum(float((c.astype(np.float64) ** 2).sum()) for c in clipped))
    assert norm == pytest.approx(1.0, rel=1e-5)
    noised = clip_and_noise(update, start, clipping_norm=1.0, noise_multiplier=1.0, seed=0)
    assert not np.allclose(np.concatenate([n.ravel() for n in noised]),
                           np.concatenate([c.ravel() for c in clipped]))  # fmt: skip


def test_a_federated_result_fills_status_federation_and_site_lineage() -> None:
    rounds: list[dict[str, Any]] = [
        {"round": r, "sitesActive": ["a"], "sitesDropped": [], "metrics": {}} for r in (1, 2)
    ]
    federation = {
        "roundsCompleted": 2,
        "rounds": rounds,
        "privacy": {"epsilonSpent": 3.5, "delta": 1e-5},
    }
    result = {"outcome": "Succeeded", "reason": BUDGET_EXHAUSTED, "metrics": {"val_loss": 0.2},
              "artifact": {"uri": "file:///x", "digest": "sha256:" + "0" * 64},
              "federation": federation}  # fmt: skip
    inputs = ("InputsReady", True, "DatasetReady", "sites")
    draft = training_outcome(result, {"trainingJob": "tumours"}, inputs)
    # The sites as the operator (or neuraxis run) resolved them; the rounds come from the result.
    add_federation(draft, result, [{"site": "a", "dataset": "a-records", "datasetVersion": 3}])
    assert draft.phase == "Succeeded" and draft.reason == BUDGET_EXHAUSTED
    assert draft.fields["federation"]["roundsCompleted"] == 2
    assert draft.fields["federation"]["privacy"]["epsilonSpent"] == 3.5
    sites = [{"site": "a", "dataset": "a-records", "datasetVersion": 3, "rounds": [1, 2]}]
    assert draft.fields["lineage"] == {"trainingJob": "tumours", "sites": sites}
