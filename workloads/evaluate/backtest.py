"""Backtest mode of the evaluate workload: an Approved model scored again on the latest version of
its evaluation Dataset and judged by the same gates. Unlike an evaluation it writes no model
card and changes nothing next to the artifact: its only output is the run's result, which the
operator (from the termination message) or `neuraxis backtest` turns into one entry of
`status.evaluationHistory` (neuraxis/operator/outcomes.py: backtest_entry)."""

from __future__ import annotations

from typing import Any

from neuraxis.crds.modelversion import ModelVersion
from neuraxis.lake import Lake
from neuraxis.workloads.artifact import artifact_digest
from neuraxis.workloads.evaluate.gates import gates_summary
from neuraxis.workloads.evaluate.heldout import load_artifact, load_heldout
from neuraxis.workloads.evaluate.run import artifact_folder_for, judge, verdict_result
from neuraxis.workloads.result import now_rfc3339, publish_result


def run_backtest(
    mv: ModelVersion,
    lake: Lake,
    namespace: str,
    run_id: str,
    *,
    artifact_uri: str | None = None,
    expected_digest: str | None = None,
) -> dict[str, Any]:
    """Score the artifact (refused unless its digest is `expected_digest`, the one the version
    pinned, when given) on every row of the newest version of spec.evaluation.datasetRef."""
    started = now_rfc3339()
    ref = mv.spec.evaluation.dataset_ref if mv.spec.evaluation else None
    if ref is None:
        raise ValueError("spec.evaluation.datasetRef: required for a backtest")
    folder = artifact_folder_for(mv, lake, namespace, artifact_uri)
    artifact = load_artifact(lake, folder, expected_digest or mv.spec.source.digest)
    # version=None: the newest version of the table (the ETL commits only finished runs).
    heldout = load_heldout(
        lake, ref.namespace or namespace, artifact, dataset=ref.name, version=None
    )
    if len(heldout.x) == 0:
        raise ValueError(f"{heldout.description}: no rows to backtest on")
    _evaluated, _outputs, metrics, gates = judge(mv, artifact, heldout)
    passed, reason = gates_summary(gates)
    dataset = {"name": ref.name, "rows": len(heldout.x), **heldout.dataset}
    artifact_ref = {"uri": lake.uri(folder), "digest": artifact_digest(lake, folder)}
    result: dict[str, Any] = {
        **verdict_result(mv, namespace, run_id, started, passed, reason, metrics),
        "mode": "backtest",
        "gates": [g.to_dict() for g in gates],
        "dataset": dataset,
        "artifact": artifact_ref,
    }
    compact = {
        "outcome": "Succeeded",
        "reason": result["reason"],
        "message": reason,
        "mode": "backtest",
        "passed": passed,
        "metrics": metrics,
        "dataset": dataset,
        "completionTime": result["completionTime"],
    }
    publish_result(lake, namespace, run_id, result, compact)
    return result
