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
        if parent_name:
            node.parents.append(_parent(store, parent_kind, parent_name, namespace, above))

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
        if lineage.get("sites"):
            node.details.append(f"federated over {len(lineage['sites'])} sites")
            node.parents += [_site(store, s, namespace, above) for s in lineage["sites"]]
        else:
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


def _parent(
    store: Store, kind: str, name: str, namespace: str, above: frozenset[tuple[str, str]]
) -> Node:
    if (kind, name) in above:
        return Node(kind, name, ["(loop: shown above)"])
    found = store.get(CR_VERSION, kind, namespace, name)
    return (
        _node(store, found, namespace, above) if found else Node(kind, name, ["no recorded status"])
    )


def _site(
    store: Store, site: dict[str, Any], namespace: str, above: frozenset[tuple[str, str]]
) -> Node:
    """One site of a federated run: the Dataset version it trained on and its rounds."""
    rounds = site.get("rounds") or []
    node = Node(
        "Site",
        str(site.get("site")),
        [
            f"trained on version {site.get('datasetVersion')}",
            f"digest {_short(site.get('datasetDigest'))}",
            f"rounds {', '.join(str(r) for r in rounds) if rounds else 'none'}",
        ],
    )
    if site.get("dataset"):
        node.parents.append(_parent(store, "Dataset", str(site["dataset"]), namespace, above))
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


GAP = 0.6  # inches between columns: room for an arrow
HEIGHT = 1.0  # inches per row: room for a box of four lines


@dataclass
class Drawing:
    """A drawn lineage picture: the figure, each box as (left, right, y centre) and each arrow
    as ((x, y) start, (x, y) end), in inches (1 data unit = 1 inch), boxes in chain() order."""

    figure: Any
    boxes: list[tuple[float, float, float]]
    arrows: list[tuple[tuple[float, float], tuple[float, float]]]


def _rows(root: Node) -> dict[int, float]:
    """Each node's row (id -> row, 0 = top): a node without parents takes the next row, any
    other sits level with the middle of its parents, so a chain stays on one line and the sites
    of a federated job each get their own."""
    rows: dict[int, float] = {}
    free = itertools.count()

    def place(node: Node) -> None:
        for parent in node.parents:
            place(parent)
        parents = [rows[id(p)] for p in node.parents]
        rows[id(node)] = sum(parents) / len(parents) if parents else float(next(free))

    place(root)
    return rows


def _depths(root: Node) -> dict[int, int]:
    depths: dict[int, int] = {}

    def walk(node: Node, depth: int) -> None:
        depths[id(node)] = depth
        for parent in node.parents:
            walk(parent, depth + 1)

    walk(root, 0)
    return depths


def draw(root: Node) -> Drawing:
    """The lineage left to right (raw sources on the left, the start on the right), one column
    per step back from the start, drawn with matplotlib.

    Each column is placed after measuring the boxes of the one before it (their drawn extent,
    padding included), so labels stay inside their boxes whatever their length, and each arrow
    runs from the right edge of a parent's box to the left edge of its child's. The axes fill
    the figure and one data unit is one inch, so resizing the figure to the measured width
    moves nothing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nodes = chain(root)
    rows, depths = _rows(root), _depths(root)
    height = HEIGHT * (max(rows.values()) + 1)
    measuring_width = 12.0 * (max(depths.values()) + 1)
    fig = plt.figure(figsize=(measuring_width, height))
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_axis_off()
    ax.set_xlim(0, measuring_width)
    ax.set_ylim(0, height)
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]

    def extent(label: Any) -> Any:
        label.update_bbox_position_size(renderer)  # the box is sized when drawn: size it now
        patch = label.get_bbox_patch()
        assert patch is not None
        return patch.get_window_extent(renderer).transformed(ax.transData.inverted())

    placed: dict[int, tuple[float, float, float]] = {}
    left = 0.2
    for depth in range(max(depths.values()), -1, -1):
        right = left
        for node in (n for n in nodes if depths[id(n)] == depth):
            y = height - (rows[id(node)] + 0.5) * HEIGHT
            text = "\n".join([node.label, *[d[:40] for d in node.details]])
            label = ax.text(
                left, y, text, va="center", ha="left", fontsize=7, family="monospace",
                bbox={"boxstyle": "round,pad=0.4", "facecolor": "#eef3fb", "edgecolor": "#335"},
            )  # fmt: skip
            label.set_x(2 * left - extent(label).x0)  # the padded box starts at `left`
            box = extent(label)
            placed[id(node)] = (float(box.x0), float(box.x1), y)
            right = max(right, float(box.x1))
        left = right + GAP
    arrows = []
    for node in nodes:
        _, _, y = placed[id(node)]
        for parent in node.parents:
            _, start, parent_y = placed[id(parent)]
            arrows.append(((start, parent_y), (placed[id(node)][0], y)))
    for start_xy, end_xy in arrows:
        ax.annotate(
            "", xy=end_xy, xytext=start_xy,
            arrowprops={"arrowstyle": "->", "color": "#335", "shrinkA": 0, "shrinkB": 0},
        )  # fmt: skip
    width = left - GAP + 0.2
    fig.set_size_inches(width, height)
    ax.set_xlim(0, width)
    return Drawing(fig, [placed[id(n)] for n in nodes], arrows)


def to_png(root: Node, path: Path) -> Path:
    import matplotlib.pyplot as plt

    drawing = draw(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    drawing.figure.savefig(path, dpi=120)
    plt.close(drawing.figure)
    return path
