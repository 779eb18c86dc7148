"""Backtests of an Approved ModelVersion (spec.evaluation.schedule): from a backtest run's result
to one entry of `status.evaluationHistory`, and from the history to the `Degraded` condition.
Pure functions shared by the operator (results from the backtest Jobs' termination messages)
and `neuraxis backtest` (results returned in-process). A backtest never changes the phase: an
Approved or Serving version stays so, and `Degraded` tells that its gates no longer hold."""

from __future__ import annotations

from typing import Any

from neuraxis.crds.modelversion import HISTORY_KEPT
from neuraxis.operator.outcomes import Condition

Obj = dict[str, Any]

BACKTEST_FAILED = "BacktestFailed"  # a gate failed on the newer data
BACKTEST_ERROR = "BacktestError"  # the backtest could not score (no data, unreadable artifact)
BACKTEST_PASSED = "BacktestPassed"


def backtest_entry(run_id: str, result: Obj | None, finished: str, job_message: str = "") -> Obj:
    """One `evaluationHistory` entry for a finished backtest run. A run without a verdict (it
    failed, or reported nothing) is an entry that did not pass, with the reason in `message`."""
    result = result or {}
    data = result.get("dataset") or {}
    entry: Obj = {
        "time": str(result.get("completionTime") or finished),
        "runId": run_id,
        "dataset": data.get("name"),
        "datasetVersion": data.get("version"),
        "datasetDigest": data.get("digest"),
        "rows": data.get("rows"),
        "metrics": {k: float(v) for k, v in (result.get("metrics") or {}).items()},
    }
    if result.get("outcome") == "Succeeded" and "passed" in result:
        entry["passed"] = bool(result["passed"])
        entry["message"] = str(result.get("message") or "")
    else:
        entry["passed"] = False
        why = result.get("message") or job_message or "the backtest reported no result"
        entry["message"] = f"backtest could not run: {why}"
        entry["error"] = True
    return {k: v for k, v in entry.items() if v is not None}


def record_backtest(history: list[Obj], entry: Obj) -> list[Obj]:
    """The history with `entry` in it (once per run id), newest first, at most HISTORY_KEPT."""
    out = [dict(e) for e in history if e.get("runId") != entry["runId"]]
    out.append(entry)
    out.sort(key=lambda e: (str(e.get("time")), str(e.get("runId"))), reverse=True)
    return out[:HISTORY_KEPT]


def degraded_condition(history: list[Obj]) -> Condition | None:
    """`Degraded` from the newest backtest: True with the failing metric(s) in the message while
    it failed, False again once a later one passed; None before the first backtest."""
    if not history:
        return None
    newest = history[0]
    where = _where(newest)
    if newest.get("passed"):
        return ("Degraded", False, BACKTEST_PASSED, f"backtest {where}: {newest.get('message')}")
    reason = BACKTEST_ERROR if newest.get("error") else BACKTEST_FAILED
    return ("Degraded", True, reason, f"backtest {where}: {newest.get('message')}")


def _where(entry: Obj) -> str:
    version = entry.get("datasetVersion")
    data = f"{entry.get('dataset')} v{version}" if version is not None else entry.get("dataset")
    return f"{entry.get('runId')} on {data} at {entry.get('time')}"
