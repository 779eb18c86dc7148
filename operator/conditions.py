"""Conditions and phases: pure helpers that keep `lastTransitionTime` honest (it moves only
when a condition's status changes) and make `Ready` the summary every kind shares."""

from __future__ import annotations

from typing import Any

from neuraxis.workloads.result import now_rfc3339

Conditions = list[dict[str, Any]]

# kstatus, the status convention Flux, kpt and cli-utils read: `Reconciling` is True while the
# operator works toward the spec, `Stalled` is True when it cannot get there without a change
# to the spec (or its inputs); with `Ready` and `observedGeneration` a client can tell done
# from in progress from stuck without knowing the kinds' phases.
RECONCILING_PHASES = frozenset({"Pending", "Running", "Registered", "Evaluating", "RollingOut"})
STALLED_PHASES = frozenset({"Failed", "Rejected"})


def kstatus_conditions(phase: str, reason: str, message: str) -> list[tuple[str, bool, str, str]]:
    """(type, status, reason, message) of `Reconciling` and `Stalled` for a phase."""
    reconciling, stalled = phase in RECONCILING_PHASES, phase in STALLED_PHASES
    return [
        (
            "Reconciling",
            reconciling,
            reason if reconciling else phase,
            message if reconciling else "",
        ),
        ("Stalled", stalled, reason if stalled else phase, message if stalled else ""),
    ]


def set_condition(
    conditions: Conditions,
    type_: str,
    status: bool | None,
    reason: str,
    message: str,
    generation: int | None,
    now: str | None = None,
) -> Conditions:
    """Return a new list with `type_` set; other conditions are kept as they are."""
    value = "Unknown" if status is None else ("True" if status else "False")
    old = next((c for c in conditions if c.get("type") == type_), None)
    moved = old is None or old.get("status") != value
    updated = {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": (now or now_rfc3339()) if moved else old["lastTransitionTime"],  # type: ignore[index]
        "observedGeneration": generation,
    }
    rest = [c for c in conditions if c.get("type") != type_]
    return sorted([*rest, updated], key=lambda c: str(c["type"]))


def condition(conditions: Conditions, type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type_), None)
