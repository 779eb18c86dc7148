"""The lineage picture's geometry: every label inside its box, boxes apart, and each arrow from
the right edge of one box to the left edge of the next, however long the labels are."""

from __future__ import annotations

from pathlib import Path

import pytest

from neuraxis.local.lineage import GAP, Node, draw, to_png


def sample_chain(detail: str) -> Node:
    source = Node("Source", "builtin:sensors", ["seed 7"])
    raw = Node("Dataset", "sensor-readings", [f"version 3, 9996 rows {detail}"], [source])
    features = Node("Dataset", "sensor-features-with-a-long-name", ["version 4"], [raw])
    train = Node("TrainingJob", "anomaly-detector-train", ["accuracy 0.951", detail], [features])
    model = Node("ModelVersion", "anomaly-detector-v1", ["Approved"], [train])
    return Node("EdgeDeployment", "anomaly-detector-plants", ["4/4 nodes"], [model])


@pytest.mark.parametrize("detail", ["", "sha256:" + "ab" * 32])
def test_labels_inside_boxes_and_arrows_touch_them(detail: str) -> None:
    import matplotlib.pyplot as plt

    drawing = draw(sample_chain(detail))
    fig = drawing.figure
    try:
        ax = fig.axes[0]
        fig.canvas.draw()  # lays out every box at the final size, as savefig does
        renderer = fig.canvas.get_renderer()
        to_inches = ax.transData.inverted()
        texts = [t for t in ax.texts if t.get_bbox_patch() is not None]
        assert len(texts) == len(drawing.boxes) == 6
        for text, (left, right) in zip(texts, drawing.boxes, strict=True):
            # Measured again at the final figure size: nothing moved when it was resized.
            patch = text.get_bbox_patch()
            assert patch is not None
            box = patch.get_window_extent(renderer).transformed(to_inches)
            assert box.x0 == pytest.approx(left, abs=0.02)
            assert box.x1 == pytest.approx(right, abs=0.02)
            label = text.get_window_extent(renderer).transformed(to_inches)
            assert box.x0 < label.x0 and label.x1 < box.x1  # the label is inside its box
            assert box.y0 < label.y0 and label.y1 < box.y1
            assert box.x0 >= 0 and box.x1 <= fig.get_size_inches()[0]
        for (_, right), (left, _) in zip(drawing.boxes, drawing.boxes[1:], strict=False):
            assert left - right == pytest.approx(GAP, abs=0.01)  # apart, room for the arrow
        assert drawing.arrows == [
            (right, left)
            for (_, right), (left, _) in zip(drawing.boxes, drawing.boxes[1:], strict=False)
        ]
    finally:
        plt.close(fig)


def test_png_is_written(tmp_path: Path) -> None:
    path = to_png(sample_chain(""), tmp_path / "lineage.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
