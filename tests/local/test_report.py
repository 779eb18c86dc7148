"""The summary table of `neuraxis run` in an 80-column terminal and in a CI log (rich renders
80 columns when the output is not a terminal): every resource name stays whole on one line."""

from __future__ import annotations

import pytest
from rich.console import Console
from rich.table import Table

from neuraxis.local.report import status_table, summary_table
from neuraxis.local.runner import Outcome

OUTCOMES = [
    Outcome("Dataset", "sensor-readings", "Ready", "Succeeded", "", 41.3,
            status={"version": 3, "rows": 9996, "quarantinedRows": 4}),
    Outcome("TrainingJob", "anomaly-detector-train", "Succeeded", "Succeeded", "", 63.0,
            status={"metrics": {"accuracy": 0.951, "val_loss": 0.137}}),
    Outcome("ModelVersion", "anomaly-detector-v1", "Rejected", "GatesFailed",
            "accuracy 0.61 < min 0.80 on the held-out test split of sensor-features v3", 9.8),
    Outcome("EdgeDeployment", "anomaly-detector-plants", "Available", "Available", "", 12.1),
]  # fmt: skip


def rendered_in_80_columns(table: Table, terminal: bool) -> list[str]:
    """The table's lines as an 80-column terminal (or a CI log) shows them, checked to fit and
    to keep every kind and name whole on one line."""
    console = Console(width=80, record=True, force_terminal=terminal, color_system=None)
    console.print(table)
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= 80
    for o in OUTCOMES:
        assert any(o.name in line and o.kind in line for line in lines), (o.name, lines)
    return lines


@pytest.mark.parametrize("terminal", [True, False])
def test_names_stay_whole_in_80_columns(terminal: bool) -> None:
    lines = rendered_in_80_columns(summary_table(OUTCOMES), terminal)
    # The long reason is folded, not cut: every word of it is printed.
    text = " ".join(lines)
    assert all(word in text for word in ("0.61", "held-out", "sensor-features"))


@pytest.mark.parametrize(("terminal", "namespaces"), [(True, 1), (False, 1), (False, 2)])
def test_status_keeps_names_whole_in_80_columns(terminal: bool, namespaces: int) -> None:
    bodies = [
        {
            "kind": o.kind,
            "metadata": {"namespace": f"team-{i % namespaces}", "name": o.name},
            "status": {
                "phase": o.phase,
                "message": o.message or "done",
                "conditions": [{"type": "Ready", "reason": o.reason}],
            },
        }
        for i, o in enumerate(OUTCOMES)
    ]
    lines = rendered_in_80_columns(status_table(bodies), terminal)
    text = " ".join(lines)
    if namespaces == 1:
        assert "(namespace team-0)" in text
        assert all(word in text for word in ("GatesFailed:", "0.61", "held-out", "sensor-features"))
    else:  # a namespace column, whole too
        for i, o in enumerate(OUTCOMES):
            assert any(f"team-{i % 2}" in line and o.name in line for line in lines)
