"""From a workload's result to the resource's status: pure functions shared by the operator
(results arrive in termination messages) and `neuraxis run` (results returned in-process)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from neuraxis.crds.common import RUNS_KEPT
from neuraxis.crds.dataset import DatasetStatus
from neuraxis.crds.trainingjob import FederationStatus
from neuraxis.operator import conditions as cond
from neuraxis.operator.builders.auth import AUTH_REFUSALS
from neuraxis.operator.observe import run_result
from neuraxis.workloads.artifact import ARTIFACT_CHANGED
from neuraxis.workloads.federation_contract import BUDGET_EXHAUSTED, RESULT_KEY
from neuraxis.workloads.result import now_rfc3339

Obj = dict[str, Any]
Condition = tuple[str, bool | None, str, str]  # type, status, reason, message


RunPhase = str  # Running, Succeeded, Failed or Superseded (RunRecord.phase)
FINISHED_RUN_PHASES = ("Succeeded", "Failed", "Superseded")


@dataclass
class Draft:
    """What a reconciler concluded: the phase, why, extra status fields and conditions; `run`
    is the current run (id, phase) and `superseded` the ids of earlier runs being stopped."""

    phase: str
    reason: str
    message: str = ""
    ready: bool = False
    fields: dict[str, Any] = field(default_factory=dict)
    conditions: list[Condition] = field(default_factory=list)
    run: tuple[str, RunPhase] | None = None
    superseded: list[str] = field(default_factory=list)


def update_runs(
    runs: list[Obj],
    generation: int | None,
    current: tuple[str, RunPhase] | None,
    superseded: list[str],
    now: str,
) -> list[Obj]:
    """The `status.runs` history, newest first and at most RUNS_KEPT long.

    A run being stopped is `Superseded`; so is any other run still `Running` when a new run
    appears (the reconcilers start a run only after the earlier ones stopped)."""
    out = [dict(r) for r in runs]
    known = {r.get("id") for r in out}
    if current is not None and current[0] not in known:
        superseded = [*superseded, *(str(r["id"]) for r in out if r.get("phase") == "Running")]
        out.insert(0, {"id": current[0], "generation": generation or 0, "startTime": now})
    for entry in out:
        if current is not None and entry["id"] == current[0]:
            phase = current[1]
        elif entry["id"] in superseded and entry.get("phase") == "Running":
            phase = "Superseded"
        else:
            continue
        entry["phase"] = phase
        if phase in FINISHED_RUN_PHASES and not entry.get("completionTime"):
            entry["completionTime"] = now
    return out[:RUNS_KEPT]


def failed(result: Obj | None, reason: str, message: str) -> Draft:
    """A failed run: the workload's own reason and message win over the Job's."""
    result = result or {}
    return Draft(
        "Failed",
        str(result.get("reason") or reason),
        str(result.get("message") or message or "the run failed"),
    )


def dataset_outcome(result: Obj, table_uri: str) -> Draft:
    """A finished ETL run: Ready (with QualityPassed telling whether the gate held) or Failed."""
    if result.get("outcome") != "Succeeded":
        return failed(result, "EtlFailed", "the ETL run failed")
    passed = bool(result.get("qualityPassed", True))
    fields = {
        "version": result.get("version"),
        "rows": result.get("rows"),
        "quarantinedRows": result.get("quarantinedRows"),
        "qualityPassed": passed,
        # The table's place follows the lake layout; the workload reports its content digest.
        "table": {"uri": table_uri, "digest": result.get("digest")},
        **_dataset_details(result),
    }
    quality_message = (
        "every expectation held" if passed else str(result.get("message") or "quality rules failed")
    )
    quality: Condition = (
        "QualityPassed",
        passed,
        "QualityPassed" if passed else "QualityGateFailed",
        quality_message,
    )
    return Draft(
        "Ready",
        "Succeeded",
        f"version {result.get('version')} written",
        ready=True,
        fields={k: v for k, v in fields.items() if v is not None},
        conditions=[quality],
    )


def _dataset_details(result: Obj) -> Obj:
    """The schema, expectation results, lineage and truncation hint of an ETL result, as the
    status model accepts them (bounded by the workload to fit its termination message); none
    of them if the result does not validate, rather than a status the API server refuses."""
    details = {k: result[k] for k in ("schema", "quality", "lineage", "truncated") if k in result}
    if "truncated" in details and result.get("resultUri"):
        details["truncated"] = {**details["truncated"], "resultUri": result["resultUri"]}
    try:
        wire = DatasetStatus.model_validate(details).to_wire()
    except ValidationError:
        return {}
    return {k: wire[k] for k in details if k in wire}


def training_outcome(result: Obj, lineage: Obj, inputs: Condition) -> Draft:
    if result.get("outcome") != "Succeeded":
        draft = failed(result, "TrainingFailed", "training failed")
        draft.conditions.append(inputs)
        return draft
    if result.get("datasetDigest"):
        # What the run read, from the commit of the version it read (the Dataset's one digest).
        lineage = {**lineage, "datasetDigest": result["datasetDigest"]}
    fields: Obj = {"lineage": lineage, "metrics": result.get("metrics") or {}}
    if (result.get("artifact") or {}).get("uri"):
        fields["artifact"] = result["artifact"]
    if result.get("bestTrial"):
        fields["bestTrial"] = result["bestTrial"]
    if result.get("reason") == BUDGET_EXHAUSTED:
        message = "stopped before a round would have exceeded privacy.targetEpsilon"
        return Draft("Succeeded", BUDGET_EXHAUSTED, message, True, fields, [inputs])
    return Draft("Succeeded", "Succeeded", "training finished", True, fields, [inputs])


def evaluation_outcome(result: Obj) -> tuple[Draft | None, Obj]:
    """(None, fields) when the gates passed; (the Rejected or Failed Draft, fields) otherwise."""
    if "passed" not in result:
        return failed(result, "ResultMissing", "the evaluation reported no result"), {}
    evaluation = {
        "metrics": result.get("metrics") or {},
        "gates": result.get("gates") or [],
        "passed": bool(result["passed"]),
    }
    # The artifact the evaluation verified and scored: its digest is pinned from now on.
    artifact = result.get("artifact") or {}
    pinned = (
        {"uri": artifact["uri"], "digest": artifact["digest"]}
        if artifact.get("uri") and artifact.get("digest")
        else None
    )
    fields = {
        k: v
        for k, v in {
            "evaluation": evaluation,
            "cardUri": result.get("cardUri"),
            "artifact": pinned,
        }.items()
        if v is not None
    }
    if evaluation["passed"]:
        return None, fields
    message = str(result.get("message") or "gates failed")
    return Draft("Rejected", "GatesFailed", message, fields=fields), fields


def serving_refusal(pods: list[Obj]) -> Draft | None:
    """Failed/ArtifactChanged when a predictor pod refused the artifact (not the pinned one:
    changed after evaluation): the version is never served. Other start failures stay the
    Deployment's business (restarts, availability)."""
    refusal = run_result(pods)
    if refusal is None or refusal.get("reason") != ARTIFACT_CHANGED:
        return None
    message = str(refusal.get("message") or "the artifact changed after evaluation")
    return Draft("Failed", ARTIFACT_CHANGED, f"never served: {message}")


def auth_refusal(pods: list[Obj]) -> str | None:
    """The reason a predictor or edge agent would not start for its auth settings (the API-key
    Secret missing or empty: ApiKeysMissing), else None. Not a failure of the version: the
    pods start serving once the Secret exists."""
    refusal = run_result(pods)
    reason = str((refusal or {}).get("reason") or "")
    return reason if reason in AUTH_REFUSALS else None


def bundle_outcome(result: Obj) -> Obj | Draft:
    """The bundle {uri, digest}, or the Failed Draft. The digest is what every edge agent is
    pinned to, so a bundle without one is no bundle."""
    bundle = result.get("bundle") or {}
    if result.get("outcome") != "Succeeded" or not bundle.get("uri"):
        return failed(result, "BundleFailed", "the bundle run reported no bundle")
    if not bundle.get("digest"):
        return failed(result, "BundleFailed", "the bundle run reported no bundle digest")
    return dict(bundle)


def status_from_draft(
    draft: Draft, old: Obj, generation: int | None, now: str | None = None
) -> Obj:
    """The full status for a Draft, keeping condition transition times that did not move."""
    conditions: list[dict[str, Any]] = list(old.get("conditions") or [])
    for type_, value, reason, message in draft.conditions:
        conditions = cond.set_condition(conditions, type_, value, reason, message, generation, now)
    ready_message = draft.message or draft.phase
    for type_, value, reason, message in cond.kstatus_conditions(
        draft.phase, draft.reason, ready_message
    ):
        conditions = cond.set_condition(conditions, type_, value, reason, message, generation, now)
    conditions = cond.set_condition(
        conditions, "Ready", draft.ready, draft.reason, ready_message, generation, now
    )
    status = {
        **draft.fields,
        "phase": draft.phase,
        "message": draft.message,
        "observedGeneration": generation,
        "conditions": conditions,
    }
    runs = list(old.get("runs") or [])
    if draft.run is not None or draft.superseded or runs:
        status["runs"] = update_runs(
            runs, generation, draft.run, draft.superseded, now or now_rfc3339()
        )
    return status


def federation_outcome(result: Obj, sites: list[Obj]) -> tuple[Obj, list[Condition]]:
    """Status fields and conditions from a federated server app's result (RESULT_KEY): the
    rounds, the sites active and dropped in each, the privacy spent, and each site's lineage
    with the rounds it took part in. `sites` is the run's site lineage (site, dataset,
    datasetVersion, datasetDigest)."""
    block = result.get(RESULT_KEY)
    if block is None:
        return {"lineage": {"sites": sites}}, []
    try:
        federation = FederationStatus.model_validate(block).to_wire()
    except ValidationError as exc:
        message = f"the server app's {RESULT_KEY} result is malformed: {exc.errors()[0]['msg']}"
        return {"lineage": {"sites": sites}}, [("Federated", False, "ResultInvalid", message)]
    rounds = federation.get("rounds") or []
    with_rounds = [
        {**s, "rounds": [r["round"] for r in rounds if s["site"] in (r.get("sitesActive") or [])]}
        for s in sites
    ]
    done = int(federation.get("roundsCompleted") or 0)
    privacy = federation.get("privacy") or {}
    spent = f"; epsilon spent {privacy['epsilonSpent']:.3g}" if "epsilonSpent" in privacy else ""
    if result.get("reason") == BUDGET_EXHAUSTED:
        condition: Condition = (
            "Federated", True, BUDGET_EXHAUSTED,
            f"stopped after {done} round(s): one more would exceed the epsilon budget{spent}",
        )  # fmt: skip
    elif result.get("outcome") == "Succeeded":
        condition = ("Federated", True, "RoundsCompleted", f"{done} round(s) completed{spent}")
    else:
        reason = str(result.get("reason") or "FederationFailed")
        condition = ("Federated", False, reason, str(result.get("message") or reason))
    return {"federation": federation, "lineage": {"sites": with_rounds}}, [condition]


def add_federation(draft: Draft, result: Obj, sites: list[Obj]) -> None:
    """A federated run's training Draft, completed with `federation_outcome`: status.federation,
    lineage per site, and the Federated condition. The operator and `neuraxis run` both call
    this, so both write the same status from the same (compact or full) result."""
    fields, conditions = federation_outcome(result, sites)
    draft.fields.update({k: v for k, v in fields.items() if k != "lineage"})
    draft.fields["lineage"] = {**(draft.fields.get("lineage") or {}), **fields["lineage"]}
    draft.conditions += conditions


def sites_ready_condition(ready: dict[str, bool]) -> Condition:
    """SitesReady from whether each site's SuperNode is Ready: a site whose SuperNode is not
    takes no part in the rounds until it is (the server app counts it as dropped)."""
    down = [site for site, up in ready.items() if not up]
    if down:
        return (
            "SitesReady",
            False,
            "SiteNotReady",
            f"SuperNode not Ready at {', '.join(down)} ({len(ready) - len(down)}/{len(ready)} "
            "sites ready; a site that is not takes no part in the rounds)",
        )
    return ("SitesReady", True, "AllSitesReady", f"{len(ready)}/{len(ready)} sites ready")
