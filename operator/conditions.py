"""Conditions and phases: pure helpers that keep `lastTransitionTime` honest (it moves only
when a condition's status changes) and make `Ready` the summary every kind shares."""

from __future__ import annotations

from typing import Any

from neuraxis.workloads.result import now_rfc3339

Conditions = list[dict[str, Any]]


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
