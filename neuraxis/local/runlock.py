"""One writer per resource under `neuraxis run`, as in a cluster: a run of a resource first stops
the run of the same resource that another `neuraxis run` process has going, then starts.

`<state>/<ns>/<Kind>/<name>.run` holds the running run's id and its workload's process group;
an exclusive flock on that file marks the run as alive (the kernel drops it when the process
dies, so a killed `neuraxis run` leaves no stale lock). A run that takes over writes the old
run's id into `<name>.superseded`, stops the old workload (SIGTERM to its process group, SIGKILL
after a grace period) and waits for the lock; the old process sees the marker and records no
result for its run."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

STOP_GRACE_S = 20.0
POLL_S = 0.1


class RunLockError(RuntimeError):
    """The earlier run could not be stopped; the message names it and the lock file."""


@dataclass
class RunClaim:
    """This process's claim on one resource's run: released when the run ends."""

    lock_path: Path
    handle: IO[str]
    run_id: str
    superseded: str | None  # the run this one stopped, if any

    @property
    def marker(self) -> Path:
        return self.lock_path.with_suffix(".superseded")

    def started(self, pid: int) -> None:
        """Record the workload's process (its own session/group): what a successor stops."""
        _write_record(self.handle, {"runId": self.run_id, "pid": pid})

    def was_superseded(self) -> bool:
        with contextlib.suppress(OSError):
            return self.marker.read_text().strip() == self.run_id
        return False

    def release(self) -> None:
        if self.was_superseded():
            self.marker.unlink(missing_ok=True)
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def _write_record(handle: IO[str], record: dict[str, Any]) -> None:
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(record))
    handle.flush()


def _read_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


def _try_lock(handle: IO[str]) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _signal_group(pid: Any, sig: signal.Signals) -> None:
    if isinstance(pid, int) and pid > 1:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)


def claim_run(lock_path: Path, run_id: str, *, grace: float = STOP_GRACE_S) -> RunClaim:
    """Claim the resource for `run_id`, stopping a live earlier run first (see module doc)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(lock_path, "a+")  # noqa: SIM115 (held for the run; RunClaim closes it)
    superseded = None
    if not _try_lock(handle):
        record = _read_record(lock_path)
        superseded = str(record.get("runId") or "an earlier run")
        lock_path.with_suffix(".superseded").write_text(superseded)
        _signal_group(record.get("pid"), signal.SIGTERM)
        deadline = time.monotonic() + grace
        while not _try_lock(handle):
            if time.monotonic() > deadline:
                _signal_group(_read_record(lock_path).get("pid"), signal.SIGKILL)
                if time.monotonic() > deadline + grace:
                    handle.close()
                    raise RunLockError(
                        f"run {superseded} did not stop within {2 * grace:.0f}s "
                        f"(lock {lock_path} still held)"
                    )
            time.sleep(POLL_S)
    _write_record(handle, {"runId": run_id})
    return RunClaim(lock_path, handle, run_id, superseded)
