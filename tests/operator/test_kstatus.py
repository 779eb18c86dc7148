"""The four kinds follow kstatus (sigs.k8s.io/cli-utils/pkg/kstatus), the convention Flux's
health checks, kpt and `kubectl wait` users read: `observedGeneration`, a `Ready` summary, and
the abnormal-true conditions `Reconciling` and `Stalled`. `kstatus` below restates the library's
generic rules for custom resources; every phase of every kind must land where a user expects."""

from __future__ import annotations

import typing
from typing import Any

import pytest

from neuraxis.crds import Dataset, EdgeDeployment, ModelVersion, TrainingJob
from neuraxis.operator.conditions import condition
from neuraxis.operator.outcomes import Draft, status_from_draft

GOOD = {"Ready", "Succeeded", "Approved", "Serving", "Available"}
HELD = {"Suspended", "Paused"}  # steady by choice: Current for kstatus, Suspended for Argo CD


def kstatus(obj: dict[str, Any]) -> str:
    """cli-utils' generic status of a custom resource: InProgress until the generation is
    observed or while Reconciling is True, Failed while Stalled is True, else Current."""
    status = obj.get("status") or {}
    if status.get("observedGeneration") != obj["metadata"]["generation"]:
        return "InProgress"
    conditions = status.get("conditions") or []
    if (c := condition(conditions, "Reconciling")) and c["status"] == "True":
        return "InProgress"
    if (c := condition(conditions, "Stalled")) and c["status"] == "True":
        return "Failed"
    return "Current"


def phases(kind: Any) -> list[str]:
    status_model = typing.get_type_hints(kind)["status"]
    args = typing.get_args(status_model)
    model = args[0] if args else status_model
    return list(typing.get_args(model.model_fields["phase"].annotation))


KIND_PHASES = [(k.__name__, p) for k in (Dataset, TrainingJob, ModelVersion, EdgeDeployment)
               for p in phases(k)]  # fmt: skip


@pytest.mark.parametrize(("kind", "phase"), KIND_PHASES)
def test_every_phase_maps_to_the_kstatus_a_user_expects(kind: str, phase: str) -> None:
    draft = Draft(phase, "SomeReason", "details", ready=phase in GOOD)
    obj = {"metadata": {"generation": 3}, "status": status_from_draft(draft, {}, 3)}
    expected = "Failed" if phase in ("Failed", "Rejected") else "Current"
    if phase not in GOOD | HELD | {"Failed", "Rejected"}:
        expected = "InProgress"
    assert kstatus(obj) == expected
    ready = condition(obj["status"]["conditions"], "Ready")
    assert ready is not None and ready["status"] == ("True" if phase in GOOD else "False")
    # A status computed for an older generation is in progress, whatever it says.
    assert kstatus({"metadata": {"generation": 4}, "status": obj["status"]}) == "InProgress"


def test_conditions_move_with_the_phase() -> None:
    running = status_from_draft(Draft("Running", "JobRunning", "Job a"), {}, 1, now="t1")
    done = status_from_draft(Draft("Succeeded", "Succeeded", "ok", True), running, 1, now="t2")
    reconciling = condition(done["conditions"], "Reconciling")
    assert reconciling is not None
    assert (reconciling["status"], reconciling["lastTransitionTime"]) == ("False", "t2")
    stalled = condition(done["conditions"], "Stalled")
    assert stalled is not None and (stalled["status"], stalled["lastTransitionTime"]) == (
        "False",
        "t1",
    )
