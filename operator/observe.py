"""Reading what a run's Job and pods say, without side effects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from neuraxis.workloads.result import read_compact_result

RunState = Literal["Missing", "Active", "Suspended", "Succeeded", "Failed"]
INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"


@dataclass(frozen=True)
class RunObservation:
    """The state of one run: its Job's condition and the workload's compact result."""

    state: RunState
    reason: str
    message: str
    result: dict[str, Any] | None


def _job_condition(job: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return dict(cond)
    return None


def _terminated_messages(pod: dict[str, Any]) -> list[str]:
    out = []
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        for key in ("state", "lastState"):
            terminated = (status.get(key) or {}).get("terminated") or {}
            if terminated.get("message"):
                out.append(str(terminated["message"]))
    return out


def run_result(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The compact result of a run: from the index-0 pod (rank 0 reports) when there is one,
    else from the newest pod that wrote one."""

    def order(pod: dict[str, Any]) -> tuple[int, str]:
        labels = (pod.get("metadata") or {}).get("labels") or {}
        index = labels.get(INDEX_LABEL)
        created = str((pod.get("metadata") or {}).get("creationTimestamp") or "")
        return (0 if index in (None, "0") else 1, _negate(created))

    for pod in sorted(pods, key=order):
        for message in _terminated_messages(pod):
            parsed = read_compact_result(message)
            if parsed is not None:
                return parsed
    return None


def _negate(stamp: str) -> str:
    # Newest first within a group, while keeping one sort key.
    return "".join(chr(0x10FFFF - ord(c)) for c in stamp)


def observe_run(job: dict[str, Any] | None, pods: list[dict[str, Any]]) -> RunObservation:
    if job is None:
        return RunObservation("Missing", "NotStarted", "", None)
    result = run_result(pods)
    done = _job_condition(job, "Complete") or _job_condition(job, "SuccessCriteriaMet")
    if done:
        return RunObservation("Succeeded", "JobSucceeded", "", result)
    failed = _job_condition(job, "Failed") or _job_condition(job, "FailureTarget")
    if failed:
        reason = str(failed.get("reason") or "JobFailed")
        message = str(failed.get("message") or "the Job failed")
        return RunObservation("Failed", reason, message, result)
    if (job.get("spec") or {}).get("suspend"):
        return RunObservation("Suspended", "Suspended", "the run is suspended", None)
    return RunObservation("Active", "Running", "", None)
