"""Run identity: run ids carry the resource's uid and generation, stay valid Kubernetes names,
and `status.runs` records each run, with earlier unfinished ones `Superseded`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from neuraxis.crds import Dataset
from neuraxis.lake import Lake
from neuraxis.operator.builders.dataset import build_dataset_children
from neuraxis.operator.children import RUN_NAME_MAX, run_generation, run_name
from neuraxis.operator.outcomes import Draft, status_from_draft, update_runs
from neuraxis.operator.settings import OperatorSettings
from neuraxis.resources import load_resources, parse_resource
from neuraxis.workloads.train.checkpoint import CheckpointStore
from tests.conftest import EXAMPLES

FIRST_UID = "0a1b2c3d-0000-4000-8000-000000000001"
SECOND_UID = "9f8e7d6c-0000-4000-8000-000000000002"
LABEL_VALUE = r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
NOW = "2026-01-01T00:00:00Z"
LATER = "2026-01-01T00:05:00Z"


def dataset(uid: str, generation: int = 1, name: str = "sensor-readings") -> Dataset:
    found = next(
        r for r in load_resources([EXAMPLES / "smart-manufacturing"]) if r.kind == "Dataset"
    )
    assert isinstance(found, Dataset)
    found.metadata.name = name
    found.metadata.namespace = "ml"
    found.metadata.uid = uid
    found.metadata.generation = generation
    return found


def test_a_recreated_resource_gets_a_new_run_id_for_the_same_generation() -> None:
    first, again = dataset(FIRST_UID), dataset(SECOND_UID)
    assert run_name(first, "etl") == "sensor-readings-etl-0a1b2c3d-g1"
    assert run_name(again, "etl") == "sensor-readings-etl-9f8e7d6c-g1"
    # The Job (and so NEURAXIS_RUN_ID, from the job-name label) follows the run name.
    jobs = [c for c in build_dataset_children(again, OperatorSettings()) if c["kind"] == "Job"]
    assert jobs[0]["metadata"]["name"] == "sensor-readings-etl-9f8e7d6c-g1"


def test_a_spec_change_gets_a_new_run_id_and_the_generation_reads_back() -> None:
    assert run_name(dataset(FIRST_UID, 7), "etl") == "sensor-readings-etl-0a1b2c3d-g7"
    assert run_generation("sensor-readings-etl-0a1b2c3d-g7") == 7
    assert run_generation("sensor-readings-etl") is None


@pytest.mark.parametrize("generation", [1, 12345])
def test_long_names_are_shortened_into_valid_distinct_names(generation: int) -> None:
    import re

    name = "a-very-long-dataset-name-that-fills-the-fifty-chars"[:50].rstrip("-")
    first = run_name(dataset(FIRST_UID, generation, name), "train")
    second = run_name(dataset(SECOND_UID, generation, name), "train")
    for run in (first, second):
        assert len(run) <= RUN_NAME_MAX, run
        assert re.match(LABEL_VALUE, run) and "--" not in run, run
        assert run.endswith(f"-g{generation}")
    assert first != second


def test_a_resource_without_a_uid_has_no_run_name() -> None:
    with pytest.raises(ValueError, match="has no uid"):
        run_name(dataset(""), "etl")


def test_a_new_run_supersedes_the_running_one_and_keeps_finished_ones() -> None:
    runs = update_runs([], 1, ("ds-etl-0a1b2c3d-g1", "Succeeded"), [], NOW)
    runs = update_runs(runs, 2, ("ds-etl-0a1b2c3d-g2", "Running"), [], NOW)
    runs = update_runs(runs, 3, ("ds-etl-0a1b2c3d-g3", "Running"), [], LATER)
    assert [(r["id"], r["phase"]) for r in runs] == [
        ("ds-etl-0a1b2c3d-g3", "Running"),
        ("ds-etl-0a1b2c3d-g2", "Superseded"),
        ("ds-etl-0a1b2c3d-g1", "Succeeded"),
    ]
    assert runs[1]["completionTime"] == LATER and runs[1]["generation"] == 2
    assert "completionTime" not in runs[0]


def test_a_run_being_stopped_is_superseded_before_the_next_one_exists() -> None:
    runs = update_runs([], 1, ("ds-etl-0a1b2c3d-g1", "Running"), [], NOW)
    waiting = Draft("Pending", "StoppingPreviousRun", superseded=["ds-etl-0a1b2c3d-g1"])
    status = status_from_draft(waiting, {"runs": runs}, 2, now=LATER)
    assert [(r["id"], r["phase"]) for r in status["runs"]] == [("ds-etl-0a1b2c3d-g1", "Superseded")]


def test_runs_history_is_bounded_and_stable() -> None:
    runs: list[dict[str, Any]] = []
    for generation in range(1, 20):
        runs = update_runs(runs, generation, (f"r-g{generation}", "Succeeded"), [], NOW)
    assert len(runs) == 8 and runs[0]["id"] == "r-g19"
    assert update_runs(runs, 19, ("r-g19", "Succeeded"), [], LATER) == runs


def test_status_runs_fit_the_crd() -> None:
    body = dataset(FIRST_UID).to_wire()
    draft = Draft("Running", "Running", run=("sensor-readings-etl-0a1b2c3d-g1", "Running"))
    body["status"] = status_from_draft(draft, {}, 1, now=NOW)
    parsed = parse_resource(body)
    assert parsed.status is not None
    assert parsed.status.runs[0].id == "sensor-readings-etl-0a1b2c3d-g1"


def test_a_recreated_training_job_finds_no_checkpoint_of_the_old_one(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    old_run = run_name(dataset(FIRST_UID), "train")
    new_run = run_name(dataset(SECOND_UID), "train")
    CheckpointStore(lake, "ml", old_run, keep=2).save(3, {"model": {}})
    assert CheckpointStore(lake, "ml", old_run, keep=2).epochs() == [3]
    assert CheckpointStore(lake, "ml", new_run, keep=2).latest_valid() is None
