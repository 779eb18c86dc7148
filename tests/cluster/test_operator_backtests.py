"""Backtests in a cluster (KWOK): spec.evaluation.schedule becomes a CronJob owned by the
ModelVersion; the real CronJob and Job controllers start backtest Jobs every minute; each
finished one becomes an `evaluationHistory` entry and the newest sets `Degraded`, while the
version stays Approved. The pods' results come from the KWOK termination-message annotation, which
the ModelVersion's pod annotations set: changing them (no new generation, so no new evaluation)
makes the next backtest fail."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.conftest import Cluster
from tests.cluster.operator_fixtures import (
    OperatorProcess,
    condition,
    example,
    get,
    names,
    phase,
    running_operator,
    wait_for,
    with_result,
)

DIGEST = "sha256:" + "ab" * 32
DATA = {"name": "sensor-features", "version": 4, "digest": "sha256:" + "cd" * 32, "rows": 400}


def _result(passed: bool, accuracy: float) -> dict[str, Any]:
    """What an evaluation and a backtest pod report (one annotation serves both)."""
    return {
        "outcome": "Succeeded",
        "reason": "GatesPassed" if passed else "GatesFailed",
        "message": f"accuracy {accuracy} {'>=' if passed else '<'} min 0.8",
        "passed": passed,
        "metrics": {"accuracy": accuracy},
        "gates": [{"metric": "accuracy", "value": accuracy, "min": 0.8, "passed": passed}],
        "dataset": DATA,
        "cardUri": "s3://lake/models/ml/anomaly-detector/anomaly-detector-v1/card/card.md",
    }


@pytest.fixture
def operator(cluster: Cluster, namespace: str, tmp_path: Path) -> Any:
    with running_operator(cluster, namespace, tmp_path, fake_nodes=True) as op:
        yield op


def _history(cluster: Cluster, ns: str) -> list[dict[str, Any]]:
    body = get(cluster, "modelversions", "anomaly-detector-v1", ns) or {}
    return list((body.get("status") or {}).get("evaluationHistory") or [])


def test_scheduled_backtests_record_history_and_degrade(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    ns = namespace
    mv = with_result(example("04-anomaly-detector-v1.yaml"), _result(True, 0.93))
    mv["spec"]["source"] = {"uri": "s3://lake/models/ml/anomaly-detector/v0", "digest": DIGEST}
    mv["spec"].pop("serving")
    mv["spec"]["evaluation"] = {
        "datasetRef": {"name": "sensor-features"},
        "schedule": "* * * * *",
        "gates": [{"metric": "accuracy", "min": 0.8}],
    }
    cluster.apply(mv, ns)
    wait_for(
        lambda: phase(cluster, "modelversions", "anomaly-detector-v1", ns) == "Approved",
        "Approved",
        op=operator,
    )
    crons = names(cluster, "cronjobs", ns, "neuraxis.dev/modelversion=anomaly-detector-v1")
    assert len(crons) == 1 and "backtest" in crons[0], crons
    # The CronJob controller fires at the next minute boundary.
    first = wait_for(lambda: _history(cluster, ns), "a backtest entry", timeout=150, op=operator)
    assert first[0]["passed"] is True and first[0]["datasetVersion"] == 4
    assert first[0]["datasetDigest"] == DATA["digest"]
    degraded = condition(get(cluster, "modelversions", "anomaly-detector-v1", ns), "Degraded")
    assert degraded is not None and degraded["status"] == "False", degraded

    failing = with_result({"metadata": {}}, _result(False, 0.61))["metadata"]["annotations"]
    cluster.kubectl(
        "annotate", "--overwrite", "--namespace", ns, "modelversions/anomaly-detector-v1",
        *(f"{k}={v}" for k, v in failing.items()),
    )  # fmt: skip

    def degraded_now() -> dict[str, Any] | None:
        found = condition(get(cluster, "modelversions", "anomaly-detector-v1", ns), "Degraded")
        return found if found and found["status"] == "True" else None

    degraded = wait_for(degraded_now, "Degraded=True", timeout=150, op=operator)
    assert degraded["reason"] == "BacktestFailed"
    assert "accuracy 0.61 < min 0.8" in degraded["message"]
    history = _history(cluster, ns)
    assert history[0]["passed"] is False and any(e["passed"] for e in history[1:])
    assert phase(cluster, "modelversions", "anomaly-detector-v1", ns) == "Approved"
    assert json.loads(json.dumps(history)) == history  # plain JSON, as stored
