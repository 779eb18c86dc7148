"""The lineage picture's geometry: every label inside its box, boxes apart, and each arrow from
the right edge of a parent's box to the left edge of its child's, however long the labels are;
a chain on one line, a federated job's sites each on their own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from neuraxis.local.lineage import GAP, Drawing, Node, chain, draw, to_png


def sample_chain(detail: str) -> Node:
    source = Node("Source", "builtin:sensors", ["seed 7"])
    raw = Node("Dataset", "sensor-readings", [f"version 3, 9996 rows {detail}"], [source])
    features = Node("Dataset", "sensor-features-with-a-long-name", ["version 4"], [raw])
    train = Node("TrainingJob", "anomaly-detector-train", ["accuracy 0.951", detail], [features])
    model = Node("ModelVersion", "anomaly-detector-v1", ["Approved"], [train])
    return Node("EdgeDeployment", "anomaly-detector-plants", ["4/4 nodes"], [model])


def sample_federation() -> Node:
    """A federated job: three sites, each with its Dataset and source (names of unequal width)."""
    sites = []
    for site, name in (("a", "records"), ("b", "records-with-a-long-name"), ("c", "r")):
        source = Node("Source", "builtin:breast-cancer", ["seed 7"])
        dataset = Node("Dataset", f"hospital-{site}-{name}", ["version 0"], [source])
        sites.append(Node("Site", f"hospital-{site}", ["rounds 1, 2"], [dataset]))
    train = Node("TrainingJob", "tumour-federated", ["federated over 3 sites"], sites)
    return Node("ModelVersion", "tumour-classifier-v1", ["Approved"], [train])


def check_geometry(drawing: Drawing, root: Node) -> None:
    """Labels inside boxes measured at the final size, boxes inside the figure and apart,
    every parent -> child arrow from the parent's right edge to the child's left edge."""
    fig = drawing.figure
    ax = fig.axes[0]
    fig.canvas.draw()  # lays out every box at the final size, as savefig does
    renderer = fig.canvas.get_renderer()
    to_inches = ax.transData.inverted()
    texts = [t for t in ax.texts if t.get_bbox_patch() is not None]
    assert len(texts) == len(drawing.boxes) == len(chain(root))
    measured: list[Any] = []
    for text in texts:
        patch = text.get_bbox_patch()
        assert patch is not None
        box = patch.get_window_extent(renderer).transformed(to_inches)
        label = text.get_window_extent(renderer).transformed(to_inches)
        assert box.x0 < label.x0 and label.x1 < box.x1  # the label is inside its box
        assert box.y0 < label.y0 and label.y1 < box.y1
        assert box.x0 >= 0 and box.x1 <= fig.get_size_inches()[0]
        assert box.y0 >= 0 and box.y1 <= fig.get_size_inches()[1]
        measured.append(box)
    # Nothing moved when the figure was resized: the recorded boxes are the drawn ones.
    drawn = sorted((round(b.x0, 1), round(b.x1, 1)) for b in measured)
    assert drawn == sorted((round(left, 1), round(right, 1)) for left, right, _ in drawing.boxes)
    for i, a in enumerate(measured):  # no two boxes overlap
        for b in measured[i + 1 :]:
            assert a.x1 <= b.x0 or b.x1 <= a.x0 or a.y1 <= b.y0 or b.y1 <= a.y0
    where = {id(n): box for n, box in zip(chain(root), drawing.boxes, strict=True)}
    expected = [
        ((where[id(p)][1], where[id(p)][2]), (where[id(n)][0], where[id(n)][2]))
        for n in chain(root)
        for p in n.parents
    ]
    assert drawing.arrows == expected
    for (x0, _), (x1, _) in drawing.arrows:
        assert x1 - x0 >= GAP - 0.01  # room for the arrow


@pytest.mark.parametrize("detail", ["", "sha256:" + "ab" * 32])
def test_a_chain_is_one_line_with_labels_inside_boxes(detail: str) -> None:
    import matplotlib.pyplot as plt

    root = sample_chain(detail)
    drawing = draw(root)
    try:
        check_geometry(drawing, root)
        assert len({y for _, _, y in drawing.boxes}) == 1
        lefts = sorted(left for left, _, _ in drawing.boxes)
        rights = sorted(right for _, right, _ in drawing.boxes)
        for right, left in zip(rights, lefts[1:], strict=False):
            assert left - right == pytest.approx(GAP, abs=0.01)  # apart, room for the arrow
    finally:
        plt.close(drawing.figure)


def test_each_site_of_a_federated_job_gets_its_own_row() -> None:
    import matplotlib.pyplot as plt

    root = sample_federation()
    drawing = draw(root)
    try:
        check_geometry(drawing, root)
        nodes = chain(root)
        rows = {n.label: y for n, (_, _, y) in zip(nodes, drawing.boxes, strict=True)}
        site_rows = [rows[f"Site hospital-{s}"] for s in "abc"]
        assert len(set(site_rows)) == 3  # one row per site
        assert rows["TrainingJob tumour-federated"] == pytest.approx(sum(site_rows) / 3)
        # Each site's Dataset sits on its site's row; the three sites share one column.
        for s, name in (("a", "records"), ("b", "records-with-a-long-name"), ("c", "r")):
            assert rows[f"Dataset hospital-{s}-{name}"] == rows[f"Site hospital-{s}"]
        sites = [b for n, b in zip(nodes, drawing.boxes, strict=True) if n.kind == "Site"]
        assert len({round(left, 3) for left, _, _ in sites}) == 1
    finally:
        plt.close(drawing.figure)


def test_png_is_written(tmp_path: Path) -> None:
    path = to_png(sample_federation(), tmp_path / "lineage.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
