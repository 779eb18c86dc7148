"""Lineage from the recorded statuses: edge bundle -> model version -> training job -> dataset
version -> (derived datasets ->) raw source, as a terminal tree, Mermaid, Graphviz dot or PNG."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neuraxis.operator.inputs import CR_VERSION, Store


@dataclass
class Node:
    """One step of the chain: what it is, and the figures that pin it down."""

    kind: str
    name: str
    details: list[str] = field(default_factory=list)
    parents: list[Node] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name}"


class LineageError(LookupError):
    """The starting resource is unknown."""


def _short(digest: Any) -> str:
    return str(digest)[:19] if digest else "?"


def build(store: Store, kind: str, name: str, namespace: str) -> Node:
    body = store.get(CR_VERSION, kind, namespace, name)
    if body is None:
        raise LineageError(f"{kind}/{name} has no recorded status (run it first)")
    return _node(store, body, namespace, frozenset())


def _node(
    store: Store, body: dict[str, Any], namespace: str, above: frozenset[tuple[str, str]]
) -> Node:
    """`above`: the resources on the path from the start, so that the edge-to-lake loop (an
    EdgeDeployment serving a model trained on its own logs) ends instead of recursing."""
    kind, name = body["kind"], body["metadata"]["name"]
    above = above | {(kind, name)}
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    lineage = status.get("lineage") or {}
    node = Node(kind, name, [f"phase {status.get('phase', '?')}"])

    def parent(parent_kind: str, parent_name: str | None) -> None:
        if not parent_name:
            return
        if (parent_kind, parent_name) in above:
            node.parents.append(Node(parent_kind, parent_name, ["(loop: shown above)"]))
            return
        found = store.get(CR_VERSION, parent_kind, namespace, parent_name)
        node.parents.append(
            _node(store, found, namespace, above)
            if found
            else Node(parent_kind, parent_name, ["no recorded status"])
        )

    if kind == "EdgeDeployment":
        bundle = status.get("bundle") or {}
        node.details += [
            f"bundle {bundle.get('uri', '?')}",
            f"digest {_short(bundle.get('digest'))}",
        ]
        parent("ModelVersion", (spec.get("modelVersionRef") or {}).get("name"))
    elif kind == "ModelVersion":
        artifact = status.get("artifact") or {}
        node.details += [f"artifact {artifact.get('uri', '?')}"]
        if status.get("cardUri"):
            node.details.append(f"card {status['cardUri']}")
        parent("TrainingJob", ((spec.get("source") or {}).get("trainingJobRef") or {}).get("name"))
    elif kind == "TrainingJob":
        artifact = status.get("artifact") or {}
        node.details += [f"artifact digest {_short(artifact.get('digest'))}"]
        node.details.append(
            f"read Dataset {lineage.get('dataset')} version {lineage.get('datasetVersion')}"
            f" ({_short(lineage.get('datasetDigest'))})"
        )
        parent("Dataset", lineage.get("dataset") or (spec.get("datasetRef") or {}).get("name"))
    elif kind == "Dataset":
        table = status.get("table") or {}
        node.details += [
            f"version {status.get('version')}",
            f"digest {_short(table.get('digest'))}",
        ]
        for read in lineage.get("inputs") or []:
            if read.get("dataset"):
                node.details.append(
                    f"read Dataset {read['dataset']} version {read.get('version')}"
                    f" ({_short(read.get('digest'))})"
                )
            elif read.get("edgeDeployment"):
                node.details.append(
                    f"read the inference logs of EdgeDeployment {read['edgeDeployment']}"
                    f" (table version {read.get('version')})"
                )
        source = spec.get("source") or {}
        edge = (source.get("from") or {}).get("edgeDeploymentRef") or {}
        if edge.get("name"):
            parent("EdgeDeployment", edge["name"])
        elif source.get("from"):
            parent("Dataset", (source["from"].get("datasetRef") or {}).get("name"))
        elif source.get("builtin"):
            builtin = source["builtin"]
            node.parents.append(
                Node("Source", f"builtin:{builtin.get('name')}", [f"seed {builtin.get('seed')}"])
            )
        elif source.get("uri"):
            node.parents.append(Node("Source", str(source["uri"]), [str(source.get("format"))]))
    return node


def chain(node: Node) -> list[Node]:
    """Every node, the start first, depth first."""
    out = [node]
    for p in node.parents:
        out += chain(p)
    return out


def _ident(node: Node) -> str:
    return (
        f"{node.kind}_{node.name}".replace("-", "_")
        .replace(":", "_")
        .replace("/", "_")
        .replace(".", "_")
    )


def to_mermaid(root: Node) -> str:
    lines = ["graph RL"]
    for node in chain(root):
        text = "<br/>".join([node.label, *node.details])
        lines.append(f'    {_ident(node)}["{text}"]')
        for p in node.parents:
            lines.append(f"    {_ident(node)} --> {_ident(p)}")
    return "\n".join(lines) + "\n"


def to_dot(root: Node) -> str:
    lines = ["digraph lineage {", "  rankdir=RL;", "  node [shape=box];"]
    for node in chain(root):
        text = "\\n".join([node.label, *node.details]).replace('"', "'")
        lines.append(f'  {_ident(node)} [label="{text}"];')
        for p in node.parents:
            lines.append(f"  {_ident(node)} -> {_ident(p)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


GAP = 0.6  # inches between boxes: room for an arrow
HEIGHT = 1.0  # inches: room for a box of four lines


@dataclass
class Drawing:
    """A drawn lineage picture: the figure, each box's (left, right) and each arrow's
    (start, end) x, in inches from the left edge (1 data unit = 1 inch)."""

    figure: Any
    boxes: list[tuple[float, float]]
    arrows: list[tuple[float, float]]


def draw(root: Node) -> Drawing:
    """The chain left to right (raw source on the left), drawn with matplotlib.

    Each box is placed after measuring the one before it (its drawn extent, padding included),
    so labels stay inside their boxes whatever their length, and each arrow runs from the right
    edge of one box to the left edge of the next. The axes fill the figure and one data unit is
    one inch, so resizing the figure to the measured width moves nothing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nodes = list(reversed(chain(root)))
    measuring_width = 12.0 * len(nodes)
    fig = plt.figure(figsize=(measuring_width, HEIGHT))
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_axis_off()
    ax.set_xlim(0, measuring_width)
    ax.set_ylim(0, HEIGHT)
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    boxes: list[tuple[float, float]] = []
    x = 0.2
    for node in nodes:
        text = "\n".join([node.label, *[d[:40] for d in node.details]])
        label = ax.text(
            x, HEIGHT / 2, text, va="center", ha="left", fontsize=7, family="monospace",
            bbox={"boxstyle": "round,pad=0.4", "facecolor": "#eef3fb", "edgecolor": "#335"},
        )  # fmt: skip
        label.update_bbox_position_size(renderer)  # the box is sized when drawn: size it now
        patch = label.get_bbox_patch()
        assert patch is not None
        extent = patch.get_window_extent(renderer).transformed(ax.transData.inverted())
        boxes.append((float(extent.x0), float(extent.x1)))
        x = extent.x1 + GAP + (x - extent.x0)  # the next box's left edge lands GAP further
    arrows = [(right, left) for (_, right), (left, _) in itertools.pairwise(boxes)]
    for start, end in arrows:
        ax.annotate(
            "", xy=(end, HEIGHT / 2), xytext=(start, HEIGHT / 2),
            arrowprops={"arrowstyle": "->", "color": "#335", "shrinkA": 0, "shrinkB": 0},
        )  # fmt: skip
    width = boxes[-1][1] + 0.2
    fig.set_size_inches(width, HEIGHT)
    ax.set_xlim(0, width)
    return Drawing(fig, boxes, arrows)


def to_png(root: Node, path: Path) -> Path:
    import matplotlib.pyplot as plt

    drawing = draw(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    drawing.figure.savefig(path, dpi=120)
    plt.close(drawing.figure)
    return path
