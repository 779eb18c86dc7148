"""Evaluation gates: does each metric meet its threshold? Pure; the reason says why."""

from __future__ import annotations

from dataclasses import dataclass

from neuraxis.crds.modelversion import Gate


@dataclass(frozen=True)
class GateOutcome:
    metric: str
    value: float | None
    min: float | None
    max: float | None
    passed: bool
    reason: str

    def to_dict(self) -> dict[str, object]:
        return {
            "metric": self.metric,
            "value": self.value,
            "min": self.min,
            "max": self.max,
            "passed": self.passed,
            "reason": self.reason,
        }


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def check_gate(gate: Gate, metrics: dict[str, float]) -> GateOutcome:
    value = metrics.get(gate.metric)
    if value is None:
        known = ", ".join(sorted(metrics))
        return GateOutcome(
            gate.metric,
            None,
            gate.min,
            gate.max,
            False,
            f"{gate.metric} was not computed for this model (have: {known})",
        )
    failures = []
    if gate.min is not None and value < gate.min:
        failures.append(f"{gate.metric} {_fmt(value)} < min {_fmt(gate.min)}")
    if gate.max is not None and value > gate.max:
        failures.append(f"{gate.metric} {_fmt(value)} > max {_fmt(gate.max)}")
    if failures:
        return GateOutcome(gate.metric, value, gate.min, gate.max, False, "; ".join(failures))
    bounds = " and ".join(
        b
        for b in (
            f">= min {_fmt(gate.min)}" if gate.min is not None else "",
            f"<= max {_fmt(gate.max)}" if gate.max is not None else "",
        )
        if b
    )
    return GateOutcome(
        gate.metric, value, gate.min, gate.max, True, f"{gate.metric} {_fmt(value)} {bounds}"
    )


def check_gates(gates: list[Gate], metrics: dict[str, float]) -> list[GateOutcome]:
    return [check_gate(g, metrics) for g in gates]


def gates_summary(outcomes: list[GateOutcome]) -> tuple[bool, str]:
    """Whether all passed, and a one-line reason listing the failures (or all the passes)."""
    failed = [o.reason for o in outcomes if not o.passed]
    if failed:
        return False, "; ".join(failed)
    if not outcomes:
        return True, "no gates"
    return True, "; ".join(o.reason for o in outcomes)
