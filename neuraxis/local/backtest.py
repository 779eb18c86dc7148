"""`neuraxis backtest modelversion/<name>`: one backtest now, on this machine. What the operator's
CronJob does on a schedule (spec.evaluation.schedule): the evaluate workload in backtest mode
scores the Approved version on the newest version of its evaluation Dataset, and the result
becomes one entry of `status.evaluationHistory` and the `Degraded` condition, by the same rules
(neuraxis.operator.backtests). The phase does not change."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from neuraxis.crds import ModelVersion
from neuraxis.local.runner import Runner
from neuraxis.operator import conditions as cond
from neuraxis.operator.backtests import backtest_entry, degraded_condition, record_backtest
from neuraxis.operator.children import short_uid
from neuraxis.operator.inputs import CR_VERSION
from neuraxis.resources import parse_resource
from neuraxis.workloads.result import now_rfc3339

BACKTESTED_PHASES = ("Approved", "Serving")


class BacktestError(Exception):
    """The backtest cannot start (the message names the resource and what is missing)."""


@dataclass
class BacktestOutcome:
    entry: dict[str, Any]
    status: dict[str, Any]
    log: str


def load_backtested(
    runner: Runner, namespace: str, name: str
) -> tuple[dict[str, Any], ModelVersion]:
    """The stored ModelVersion, if it can be backtested: run here, Approved (or Serving), with
    an evaluation Dataset to read the newest version of."""
    body = runner.store.get(CR_VERSION, "ModelVersion", namespace, name)
    if body is None:
        raise BacktestError(
            f"ModelVersion {namespace}/{name}: not run on this machine (neuraxis run it first)"
        )
    phase = (body.get("status") or {}).get("phase")
    if phase not in BACKTESTED_PHASES:
        raise BacktestError(
            f"ModelVersion {name}: phase is {phase}; only an Approved or Serving version is "
            "backtested"
        )
    mv = parse_resource({k: body[k] for k in ("apiVersion", "kind", "metadata", "spec")})
    assert isinstance(mv, ModelVersion)
    if mv.spec.evaluation is None or mv.spec.evaluation.dataset_ref is None:
        raise BacktestError(
            f"ModelVersion {name}: spec.evaluation.datasetRef is required for a backtest (the "
            "Dataset whose newest version the model is scored on)"
        )
    if not ((body.get("status") or {}).get("artifact") or {}).get("uri"):
        raise BacktestError(f"ModelVersion {name}: status.artifact.uri is not recorded")
    return body, mv


def backtest(runner: Runner, namespace: str, name: str) -> BacktestOutcome:
    body, mv = load_backtested(runner, namespace, name)
    status = dict(body.get("status") or {})
    run_id = f"{name}-backtest-{short_uid(mv)}-{datetime.now(UTC):%Y%m%dT%H%M%S}"
    spec = runner.spec_file(mv, run_id)
    args = [
        *runner.args("evaluate", spec, namespace, run_id),
        "--artifact-uri", str(status["artifact"]["uri"]), "--backtest",
    ]  # fmt: skip
    if status["artifact"].get("digest"):  # the digest the version was approved with
        args += ["--artifact-digest", str(status["artifact"]["digest"])]
    result, log = runner.workload(mv, args, run_id)
    tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
    entry = backtest_entry(run_id, result, now_rfc3339(), f"no result ({log}): {tail}")
    history = record_backtest(list(status.get("evaluationHistory") or []), entry)
    status["evaluationHistory"] = history
    degraded = degraded_condition(history)
    if degraded is not None:
        type_, value, reason, message = degraded
        status["conditions"] = cond.set_condition(
            list(status.get("conditions") or []),
            type_,
            value,
            reason,
            message,
            (body.get("metadata") or {}).get("generation"),
        )
    runner.store.save({**body, "status": status})
    return BacktestOutcome(entry, status, str(log))
