"""`neuraxis run` gives its Dataset steps one Spark (neuraxis/workloads/etl/server.py): real
Spark, real steps. A step that needs another Spark (here: more driver memory) gets its own
process, and the shared process is gone when the run ends."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from neuraxis.lake import Lake
from neuraxis.local.runner import Runner, load_entries
from neuraxis.local.state import LocalStore
from neuraxis.operator.inputs import CR_VERSION

pytestmark = pytest.mark.engine

SHARED_LINE = "[etl-server] the run's Spark (started for Dataset patients in"
SPARK_STARTED = "Setting default log level to"  # Spark prints it once per SparkContext


def dataset(
    name: str, source: dict[str, object], sql: str, memory: str = "1g"
) -> dict[str, object]:
    return {
        "apiVersion": "neuraxis.dev/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": name},
        "spec": {
            "source": source,
            "transform": {"sql": sql},
            "quality": {"expectations": [{"rule": "rowCount", "min": 10}]},
            "engine": {"driverMemory": memory},
        },
    }


def write_chain(folder: Path) -> None:
    docs = [
        dataset("patients", {"builtin": {"name": "breast-cancer"}}, "SELECT * FROM source"),
        dataset(
            "large-tumours",
            {"from": {"datasetRef": {"name": "patients"}}},
            "SELECT mean_radius, target FROM source WHERE mean_radius > 15",
        ),
        dataset(
            "small-tumours",
            {"from": {"datasetRef": {"name": "patients"}}},
            "SELECT mean_radius, target FROM source WHERE mean_radius <= 15",
            memory="2g",
        ),
    ]
    folder.mkdir()
    for i, doc in enumerate(docs):
        (folder / f"0{i}-dataset.yaml").write_text(yaml.safe_dump(doc))


def rows_of(home: Path, name: str) -> int:
    body = LocalStore(home / "state").get(CR_VERSION, "Dataset", "default", name)
    assert body is not None, name
    return int(body["status"]["rows"])


def step_log(home: Path, name: str) -> str:
    (log,) = (home / "work" / "default").glob(f"{name}-dataset-*/workload.log")
    return log.read_text()


def test_dataset_steps_share_one_spark_unless_they_need_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("NEURAXIS_HOME", str(home))
    monkeypatch.delenv("NEURAXIS_LAKE_URI", raising=False)
    folder = tmp_path / "chain"
    write_chain(folder)
    runner = Runner(Lake(str(home / "lake")), LocalStore(home / "state"))
    outcomes = runner.run(load_entries([folder], "default"))
    assert {o.name: o.phase for o in outcomes} == {
        "patients": "Ready",
        "large-tumours": "Ready",
        "small-tumours": "Ready",
    }, [o.message for o in outcomes]
    rows = {name: rows_of(home, name) for name in ("patients", "large-tumours", "small-tumours")}
    assert rows["large-tumours"] + rows["small-tumours"] == rows["patients"] == 569

    (server_log,) = (home / "work" / "etl-server").glob("*.log")
    for name in ("patients", "large-tumours"):
        text = step_log(home, name)
        assert SHARED_LINE in text and str(server_log) in text, text
    # One SparkContext started in the server for both steps (its JVM logs to the server log).
    assert server_log.read_text().count(SPARK_STARTED) == 1
    own = step_log(home, "small-tumours")
    assert "[etl-server]" not in own
    assert (
        "[runner] own Spark process: needs Spark with jars delta and driver memory 2g; "
        "the run's Spark has jars delta and driver memory 1g"
    ) in own
    assert own.count(SPARK_STARTED) == 1  # its own Spark, logging into its own log
    # The run is over: no server process is left with its Spark.
    left = subprocess.run(["pgrep", "-f", str(server_log)], capture_output=True, text=True)
    assert left.stdout == "", left.stdout
