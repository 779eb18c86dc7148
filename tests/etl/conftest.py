"""One Spark session (local mode, Delta jars from the cache) for the whole test session: starting
Spark costs seconds to tens of seconds on a small machine, so every engine test shares it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml

from neuraxis.crds.dataset import Dataset, Engine
from neuraxis.lake import Lake
from neuraxis.resources import parse_resource

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "smart-manufacturing"
SALT_ENV = {"NEURAXIS_SECRET_LAKE_SALT_SALT": "test-salt-not-secret"}


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkSession]:
    from neuraxis.dev.jars import ensure_jars
    from neuraxis.workloads.etl.spark_session import local_conf, start_spark

    jars = ensure_jars(["delta"])
    lake = Lake(str(tmp_path_factory.mktemp("spark-lake")))
    conf = local_conf(Engine(), lake, jars, app_name="neuraxis-etl-tests", cores=2)
    session = start_spark(conf)
    yield session
    session.stop()


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake(str(tmp_path / "lake"))


def load_dataset(path: Path) -> Dataset:
    resource = parse_resource(yaml.safe_load(path.read_text()))
    assert isinstance(resource, Dataset)
    return resource


def dataset_from(spec: dict[str, object], name: str = "ds") -> Dataset:
    doc = {
        "apiVersion": "neuraxis.dev/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": name},
        "spec": spec,
    }
    resource = parse_resource(doc)
    assert isinstance(resource, Dataset)
    return resource
