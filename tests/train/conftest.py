"""Tiny Delta tables and TrainingJob specs for the training, evaluation and bundle tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import yaml

from neuraxis.lake import Lake

NAMESPACE = "ml"


def write_table(
    lake: Lake, name: str, rows: int = 400, seed: int = 0, mode: str = "overwrite"
) -> None:
    """A separable classification table: failure = 1 when temperature + vibration > 0."""
    rng = np.random.default_rng(seed)
    temperature = rng.normal(size=rows)
    vibration = rng.normal(size=rows)
    pressure = rng.normal(size=rows)
    table = pa.table(
        {
            "temperature": temperature,
            "vibration": vibration,
            "pressure": pressure,
            "site": pa.array(["a"] * rows),  # not numeric: never a feature by default
            "failure": (temperature + vibration > 0).astype(np.int64),
        }
    )
    write_delta(lake, name, table)


def write_delta(lake: Lake, name: str, table: pa.Table, digest: bool = True) -> None:
    """Commit `table` as a new version (replacing the data) the way a Dataset run does: the
    commit records the version's content digest, which training takes from there. Here a
    stand-in digest: sha256 of the Arrow data of this commit."""
    import hashlib
    import json

    from deltalake import CommitProperties, write_deltalake

    meta = {"neuraxisRun": "test"}
    if digest:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        meta["digest"] = "sha256:" + hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()
    write_deltalake(
        lake.uri(Lake.table_path(NAMESPACE, name)),
        table,
        mode="overwrite",
        commit_properties=CommitProperties(custom_metadata={"userMetadata": json.dumps(meta)}),
    )


def training_job(name: str = "detector-train", **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "datasetRef": {"name": "features"},
        "validationSplit": 0.25,
        "task": {"type": "classification", "label": "failure"},
        "model": {
            "architecture": "mlp",
            "epochs": 4,
            "batchSize": 32,
            "learningRate": 0.01,
            "hyperparameters": {"hiddenSize": 16, "layers": 1},
        },
    }
    base.update(spec)
    return {
        "apiVersion": "neuraxis.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": base,
    }


def write_spec(folder: Path, doc: dict[str, Any], name: str = "job.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    the_lake = Lake(str(tmp_path / "lake"))
    write_table(the_lake, "features")
    return the_lake


def model_version(
    name: str, gates: list[dict[str, Any]], model: str = "detector"
) -> dict[str, Any]:
    return {
        "apiVersion": "neuraxis.dev/v1alpha1",
        "kind": "ModelVersion",
        "metadata": {"name": name},
        "spec": {
            "model": model,
            "source": {"trainingJobRef": {"name": "detector-train"}},
            "card": {
                "description": "Predicts failures.",
                "intendedUse": "Tests.",
                "owners": ["team@example.com"],
            },
            "evaluation": {"gates": gates},
        },
    }


class Kit:
    """The helpers above, handed to tests as a fixture (conftest is not importable under
    --import-mode=importlib)."""

    namespace = NAMESPACE
    write_table = staticmethod(write_table)
    training_job = staticmethod(training_job)
    write_spec = staticmethod(write_spec)
    model_version = staticmethod(model_version)

    @staticmethod
    def job(**spec: Any) -> Any:
        from neuraxis.crds.trainingjob import TrainingJob
        from neuraxis.resources import parse_resource

        parsed = parse_resource(training_job(**spec))
        assert isinstance(parsed, TrainingJob)
        return parsed


@pytest.fixture
def kit() -> type[Kit]:
    return Kit
