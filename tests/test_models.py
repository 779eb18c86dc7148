"""The API models: examples load, defaults apply, wire form round-trips, updates are checked."""

from __future__ import annotations

import pytest

from neuraxis.crds import Dataset, ModelVersion, TrainingJob
from neuraxis.resources import ResourceError, check_update, load_resources, parse_resource
from tests.conftest import EXAMPLES


def test_every_example_validates() -> None:
    folders = [p for p in EXAMPLES.iterdir() if p.is_dir()]
    assert folders, "no examples found"
    for folder in folders:
        resources = load_resources([folder])
        assert resources, f"{folder} holds no resources"


def test_manufacturing_chain_is_complete() -> None:
    kinds = [r.kind for r in load_resources([EXAMPLES / "smart-manufacturing"])]
    assert kinds.count("Dataset") == 2
    assert {"TrainingJob", "ModelVersion", "EdgeDeployment"} <= set(kinds)


def test_defaults_are_applied() -> None:
    ds = parse_resource(
        {
            "apiVersion": "neuraxis.dev/v1alpha1",
            "kind": "Dataset",
            "metadata": {"name": "raw"},
            "spec": {"source": {"builtin": {"name": "sensors"}}},
        }
    )
    assert isinstance(ds, Dataset)
    assert ds.spec.output.mode == "overwrite"
    assert ds.spec.engine.executors == 0
    assert ds.spec.source.builtin is not None and ds.spec.source.builtin.rows == 5000


def test_wire_form_round_trips_with_aliases() -> None:
    [tj] = [
        r for r in load_resources([EXAMPLES / "smart-manufacturing"]) if r.kind == "TrainingJob"
    ]
    assert isinstance(tj, TrainingJob)
    wire = tj.to_wire()
    assert wire["spec"]["register"]["versionName"] == "anomaly-detector-v1"
    assert wire["spec"]["tuning"]["parallelTrials"] == 2
    assert parse_resource(wire) == tj


def test_strict_types_refuse_coercion() -> None:
    doc = {
        "apiVersion": "neuraxis.dev/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": "raw"},
        "spec": {"source": {"builtin": {"name": "sensors", "rows": "100"}}},
    }
    with pytest.raises(ResourceError) as info:
        parse_resource(doc)
    assert "spec.source.builtin.rows" in str(info.value)
    assert "must be of type integer" in str(info.value)


def test_unknown_kind_names_the_supported_ones() -> None:
    with pytest.raises(ResourceError, match='supported values: "Dataset"'):
        parse_resource({"apiVersion": "neuraxis.dev/v1alpha1", "kind": "Pipeline"})


def test_unchanged_update_is_allowed() -> None:
    [mv] = [
        r for r in load_resources([EXAMPLES / "smart-manufacturing"]) if r.kind == "ModelVersion"
    ]
    assert isinstance(mv, ModelVersion)
    edited = mv.model_copy(deep=True)
    edited.spec.stage = "production"  # mutable
    check_update(mv, edited)
