"""A durable inference-log buffer that delivers every record to the lake exactly once.

Records are appended to `active.jsonl` and fsync'ed before the prediction is answered. Sealing
renames the active file to `sealed/<prefix>-<seq>.jsonl`; `seq` is persisted (state.json) before
the rename, so a sealed name is never reused. Upload writes each sealed file to the lake under
the same name, then deletes it locally. A crash between the two re-uploads the same object with
the same content, which overwrites rather than duplicates: each record lands once.

    <dir>/active.jsonl   <dir>/sealed/*.jsonl   <dir>/state.json {"buffer_id", "next_seq"}
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from pathlib import Path
from typing import IO, Any

from neuraxis.lake import Lake

ACTIVE = "active.jsonl"
STATE = "state.json"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def complete_prefix(data: bytes) -> bytes:
    """The part of a JSONL file made of whole lines (a crash can tear the last one)."""
    end = data.rfind(b"\n")
    return data[: end + 1] if end >= 0 else b""


class LogBuffer:
    def __init__(self, directory: Path, node: str):
        self.dir = directory
        self.sealed_dir = directory / "sealed"
        self.sealed_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        state = self._read_state()
        if state is None:
            state = {"buffer_id": uuid.uuid4().hex[:12], "next_seq": 0}
            self._write_state(state)
        self.prefix = f"{node}-{state['buffer_id']}"
        self._repair_active()
        self._fh: IO[bytes] | None = None

    # ---- state ----------------------------------------------------------------------------------
    def _read_state(self) -> dict[str, Any] | None:
        try:
            state: dict[str, Any] = json.loads((self.dir / STATE).read_text())
            return state
        except (OSError, ValueError):
            return None

    def _write_state(self, state: dict[str, Any]) -> None:
        tmp = self.dir / f".{STATE}.tmp"
        with open(tmp, "w") as fh:
            json.dump(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.dir / STATE)
        _fsync_dir(self.dir)

    def _repair_active(self) -> None:
        path = self.dir / ACTIVE
        if path.exists():
            data = path.read_bytes()
            whole = complete_prefix(data)
            if len(whole) != len(data):
                with open(path, "r+b") as fh:
                    fh.truncate(len(whole))
                    os.fsync(fh.fileno())

    # ---- writing --------------------------------------------------------------------------------
    def append(self, records: list[dict[str, Any]]) -> None:
        """Append records durably (one write and one fsync for the whole batch)."""
        data = b"".join(json.dumps(r, sort_keys=True).encode() + b"\n" for r in records)
        with self._lock:
            if self._fh is None:
                self._fh = open(self.dir / ACTIVE, "ab")  # noqa: SIM115 (kept open across calls)
            self._fh.write(data)
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def seal(self) -> Path | None:
        """Turn the active file into a sealed segment; None when there is nothing to seal."""
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None
            active = self.dir / ACTIVE
            if not active.exists() or active.stat().st_size == 0:
                return None
            state = self._read_state()
            assert state is not None
            seq = int(state["next_seq"])
            self._write_state({**state, "next_seq": seq + 1})  # before the rename: no reuse
            target = self.sealed_dir / f"{self.prefix}-{seq:012d}.jsonl"
            os.rename(active, target)
            _fsync_dir(self.sealed_dir)
            _fsync_dir(self.dir)
            return target

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None

    # ---- reading and uploading ------------------------------------------------------------------
    def sealed(self) -> list[Path]:
        return sorted(self.sealed_dir.glob("*.jsonl"))

    def pending_records(self) -> int:
        files = [*self.sealed(), self.dir / ACTIVE]
        return sum(f.read_bytes().count(b"\n") for f in files if f.exists())

    def upload(self, lake: Lake, prefix: str) -> int:
        """Upload every sealed segment to `<prefix>/<name>` in the lake, deleting each once
        written; returns the records uploaded. Stops at the first failure (LakeError/OSError)."""
        uploaded = 0
        for path in self.sealed():
            data = path.read_bytes()
            lake.write_bytes(f"{prefix}/{path.name}", data)
            path.unlink()
            uploaded += data.count(b"\n")
        _fsync_dir(self.sealed_dir)
        return uploaded
