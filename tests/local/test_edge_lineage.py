"""`neuraxis lineage` through the edge-to-lake loop: a Dataset over an EdgeDeployment's logs
names it as its parent, and a deployment serving a model trained on its own logs ends the walk
instead of recursing forever."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from neuraxis.local.lineage import build, chain
from neuraxis.local.state import LocalStore
from neuraxis.operator.inputs import CR_VERSION


def body(kind: str, name: str, spec: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    meta = {"name": name, "namespace": "default"}
    return {
        "apiVersion": CR_VERSION,
        "kind": kind,
        "metadata": meta,
        "spec": spec,
        "status": status,
    }


def test_lineage_walks_the_edge_to_lake_loop_once(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "state")
    read = {"uri": "file:///lake/edge-logs/default/gw", "edgeDeployment": "gw", "version": 3}
    for doc in (
        # gw now serves v2, trained on gw's own logs: a loop.
        body("EdgeDeployment", "gw", {"modelVersionRef": {"name": "v2"}}, {"phase": "Available"}),
        body("ModelVersion", "v2", {"source": {"trainingJobRef": {"name": "retrain"}}}, {}),
        body("TrainingJob", "retrain", {"datasetRef": {"name": "cases"}}, {}),
        body(
            "Dataset",
            "cases",
            {"source": {"from": {"edgeDeploymentRef": {"name": "gw"}}}},
            {"phase": "Ready", "version": 0, "lineage": {"inputs": [read]}},
        ),
    ):
        store.save(doc)
    root = build(store, "TrainingJob", "retrain", "default")
    labels = [n.label for n in chain(root)]
    assert labels == [
        "TrainingJob retrain",
        "Dataset cases",
        "EdgeDeployment gw",
        "ModelVersion v2",
        "TrainingJob retrain",  # the loop, not followed again
    ]
    dataset = root.parents[0]
    assert "read the inference logs of EdgeDeployment gw (table version 3)" in dataset.details
    assert chain(root)[-1].details == ["(loop: shown above)"]
