"""Terminal output of the local commands (rich)."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.tree import Tree

from neuraxis.local.lineage import Node
from neuraxis.local.runner import Outcome, key_figure

PHASE_STYLE = {
    "Ready": "green", "Succeeded": "green", "Approved": "green", "Serving": "green",
    "Available": "green", "Failed": "red", "Rejected": "red", "Pending": "yellow",
    "Superseded": "yellow",
}  # fmt: skip


def styled(phase: str) -> str:
    """The phase in its colour (a phase without one is printed plain: `[]` is no markup)."""
    style = PHASE_STYLE.get(phase)
    return f"[{style}]{phase}[/]" if style else phase


def summary_table(outcomes: list[Outcome]) -> Table:
    """Kind, name, phase and time never wrap (a name split over two lines cannot be copied into
    kubectl); the last column (the key figure, or why it did not succeed) wraps into what is
    left of an 80-column terminal or a CI log (rich's width when output is not a terminal)."""
    table = Table(title="neuraxis run", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("Kind", "Name", "Phase", "Time"):
        table.add_column(column, no_wrap=True)
    table.add_column("Result", overflow="fold", ratio=1)
    for o in outcomes:
        style = PHASE_STYLE.get(o.phase, "")
        took = "skipped" if o.skipped else f"{o.seconds:.1f}s"
        result = key_figure(o) if style == "green" else (o.message or o.reason)
        table.add_row(o.kind, o.name, styled(o.phase), took, result)
    return table


def status_table(bodies: list[dict[str, Any]]) -> Table:
    """As the summary: namespace, kind, name and phase never wrap; why (the Ready condition's
    reason and the status message) folds into what is left of 80 columns. One namespace is
    named in the title instead of a column, leaving the room to the why."""
    namespaces = sorted({str(b["metadata"].get("namespace", "")) for b in bodies})
    one = len(namespaces) == 1
    title = f"neuraxis status (namespace {namespaces[0]})" if one else "neuraxis status"
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("Kind", "Name", "Phase") if one else ("Namespace", "Kind", "Name", "Phase"):
        table.add_column(column, no_wrap=True)
    table.add_column("Reason: message", overflow="fold", ratio=1)
    for body in bodies:
        meta, status = body["metadata"], body.get("status") or {}
        ready: dict[str, Any] = next(
            (c for c in status.get("conditions") or [] if c["type"] == "Ready"), {}
        )
        phase = str(status.get("phase", "?"))
        why = ": ".join(str(x) for x in (ready.get("reason"), status.get("message")) if x)
        where = [] if one else [str(meta.get("namespace", ""))]
        table.add_row(*where, body["kind"], meta["name"], styled(phase), why)
    return table


def history_table(history: list[dict[str, Any]], shown: int = 5) -> Table:
    """The newest backtests of a ModelVersion (status.evaluationHistory)."""
    table = Table(title="backtests (newest first)")
    for column in ("Time", "Run", "Dataset", "Digest", "Metrics", "Passed", "Why"):
        table.add_column(column, overflow="fold")
    for e in history[:shown]:
        metrics = ", ".join(f"{k} {v:.4g}" for k, v in sorted((e.get("metrics") or {}).items()))
        table.add_row(
            str(e.get("time")), str(e.get("runId")),
            f"{e.get('dataset')} v{e.get('datasetVersion')}",
            str(e.get("datasetDigest") or "")[:19], metrics,
            "[green]yes[/]" if e.get("passed") else "[red]no[/]",
            str(e.get("message") or ""),
        )  # fmt: skip
    return table


def reproduction_table(metrics: list[Any]) -> Table:
    """neuraxis reproduce: each metric then and now (MetricDiff rows)."""
    table = Table(title="reproduction")
    for column in ("Metric", "Original", "Reproduced", "Abs diff", "Within tolerance"):
        table.add_column(column, overflow="fold")

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.6g}"

    for m in metrics:
        ok = "[green]yes[/]" if m.within else "[red]no[/]"
        table.add_row(
            m.metric, fmt(m.original), fmt(m.reproduced), fmt(m.diff), f"{ok} (<= {m.tolerance:g})"
        )
    return table


def lineage_tree(root: Node) -> Tree:
    def add(tree: Tree, node: Node) -> None:
        branch = tree.add(f"[bold]{node.label}[/] " + " · ".join(node.details))
        for p in node.parents:
            add(branch, p)

    top = Tree(f"[bold]{root.label}[/] " + " · ".join(root.details))
    for p in root.parents:
        add(top, p)
    return top


console = Console()
