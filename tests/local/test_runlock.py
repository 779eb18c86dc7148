"""One writer per resource under `neuraxis run`: a run stops the run of the same resource that
another process has going (its whole workload process group) before it starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from neuraxis.local.runlock import claim_run
from neuraxis.local.runner import new_run_id
from neuraxis.local.state import LocalStore
from tests.conftest import EXAMPLES

HOLDER = textwrap.dedent(
    """
    import subprocess, sys
    from pathlib import Path
    from neuraxis.local.runlock import claim_run
    claim = claim_run(Path(sys.argv[1]), "old-run")
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    claim.started(proc.pid)
    print(proc.pid, flush=True)
    proc.wait()
    print("superseded" if claim.was_superseded() else "finished", flush=True)
    claim.release()
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"


def test_a_second_claim_stops_the_first_runs_workload(tmp_path: Path) -> None:
    lock = tmp_path / "state" / "ml" / "Dataset" / "readings.run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None
    workload = int(holder.stdout.readline())
    assert _alive(workload)
    started = time.monotonic()
    claim = claim_run(lock, "new-run", grace=10)
    try:
        assert claim.superseded == "old-run"
        assert not _alive(workload)
        assert time.monotonic() - started < 10  # SIGTERM was enough
        assert json.loads(lock.read_text()) == {"runId": "new-run"}
        assert holder.stdout.readline().strip() == "superseded"
    finally:
        claim.release()
        holder.wait(timeout=10)


def test_a_claim_after_a_finished_run_stops_nothing(tmp_path: Path) -> None:
    lock = tmp_path / "readings.run"
    first = claim_run(lock, "first")
    first.release()
    second = claim_run(lock, "second")
    try:
        assert second.superseded is None and not second.was_superseded()
    finally:
        second.release()


def test_a_run_started_in_the_second_of_an_earlier_run_gets_an_id_of_its_own() -> None:
    """The stopping run can start within a second of the run it stops; with a shared id both
    would be one status.runs entry (the likely cause of one CI failure of the test below)."""
    prefix = "readings-dataset-3f2a9c1b-g1"
    first = new_run_id(prefix, [])
    second = new_run_id(prefix, [{"id": first, "phase": "Superseded"}])
    third = new_run_id(prefix, [{"id": first}, {"id": second}])
    assert len({first, second, third}) == 3
    assert all(i.startswith(f"{prefix}-") for i in (first, second, third))


@pytest.mark.engine
def test_neuraxis_run_stops_the_running_run_of_the_same_dataset(tmp_path: Path) -> None:
    """Two `neuraxis run` of one Dataset: the later stops the earlier's Spark run first, writes
    the one Delta version, and status.runs says the earlier run was Superseded."""
    home = tmp_path / "home"
    doc = yaml.safe_load((EXAMPLES / "smart-manufacturing" / "01-sensor-readings.yaml").read_text())
    doc["spec"]["source"]["builtin"]["rows"] = 1000
    doc["spec"]["quality"]["expectations"] = [{"rule": "rowCount", "min": 1}]
    folder = tmp_path / "resources"
    folder.mkdir()
    (folder / "ds.yaml").write_text(yaml.safe_dump(doc))
    env = {
        **os.environ,
        "NEURAXIS_HOME": str(home),
        "NEURAXIS_SECRET_LAKE_SALT_SALT": "test-salt",
    }
    env.pop("NEURAXIS_LAKE_URI", None)
    argv = [sys.executable, "-m", "neuraxis.cli", "run", str(folder)]
    store = LocalStore(home / "state")

    def runs() -> list[dict[str, str]]:
        body = store.get("", "Dataset", "default", "sensor-readings") or {}
        return list((body.get("status") or {}).get("runs") or [])

    first = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not runs():
        assert time.monotonic() < deadline and first.poll() is None, "first run never started"
        time.sleep(0.2)
    [earlier] = runs()
    second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    first_out = first.communicate(timeout=60)[0].decode()
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Superseded" in first_out, first_out
    history = runs()
    assert len(history) == 2, (history, first_out, second.stdout)
    latest, stopped = history
    assert (stopped["id"], stopped["phase"]) == (earlier["id"], "Superseded")
    assert latest["phase"] == "Succeeded" and latest["id"] != earlier["id"]
    body = store.get("", "Dataset", "default", "sensor-readings") or {}
    assert body["status"]["phase"] == "Ready" and body["status"]["version"] == 0
