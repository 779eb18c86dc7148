"""`neuraxis run` reruns a Dataset over an EdgeDeployment's logs when a segment was uploaded since
its last run (no status changes then), and only then."""

from __future__ import annotations

from pathlib import Path

from neuraxis.crds import Dataset
from neuraxis.lake import Lake
from neuraxis.local.runner import Runner
from neuraxis.local.state import LocalStore
from neuraxis.resources import parse_resource


def test_a_new_uploaded_segment_is_a_new_input(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    runner = Runner(lake, LocalStore(tmp_path / "state"))
    doc = {
        "apiVersion": "neuraxis.dev/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": "cases", "namespace": "default"},
        "spec": {"source": {"from": {"edgeDeploymentRef": {"name": "gw"}}}},
    }
    ds = parse_resource(doc)
    assert isinstance(ds, Dataset)
    before = runner.inputs_digest(ds)
    assert runner.inputs_digest(ds) == before
    lake.write_bytes(f"{Lake.inference_logs_path('default', 'gw')}/n1/n1-b-000000000000.jsonl", b"")
    assert runner.inputs_digest(ds) != before
    other = f"{Lake.inference_logs_path('default', 'other-gw')}/n1/n1-b-000000000000.jsonl"
    after = runner.inputs_digest(ds)
    lake.write_bytes(other, b"")  # another deployment's upload is not this Dataset's input
    assert runner.inputs_digest(ds) == after
