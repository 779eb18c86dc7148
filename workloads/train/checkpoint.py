"""Checkpoints in the lake: `runs/<ns>/<run-id>/checkpoints/epoch-<n>.pt`, each with a sidecar
`epoch-<n>.pt.sha256` written after it. A checkpoint without its sidecar is incomplete, one whose
bytes do not match is corrupted: both are skipped with a logged error and the previous one is used.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import threading
from dataclasses import dataclass
from typing import Any

from neuraxis.lake import Lake, LakeError

log = logging.getLogger(__name__)

_NAME = re.compile(r"epoch-(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint is incomplete, corrupted or unreadable."""


@dataclass(frozen=True)
class Checkpoint:
    epoch: int
    state: dict[str, Any]
    path: str


def checkpoint_folder(namespace: str, run_id: str) -> str:
    return f"{Lake.run_path(namespace, run_id)}/checkpoints"


def epochs_to_delete(epochs: list[int], keep: int) -> list[int]:
    """All but the `keep` most recent epochs."""
    return sorted(epochs)[:-keep] if keep > 0 else sorted(epochs)


@dataclass
class CheckpointSchedule:
    """When the training loop writes a checkpoint: at the end of every `every`-th epoch, but no
    sooner than `interval_s` seconds after the previous one. The first due epoch of a run always
    gets one, so a lake that refuses the write fails the run at once, not after an interval.
    A `due` answer of True starts the next interval."""

    every: int = 1
    interval_s: float = 0.0
    last: float | None = None  # when the previous checkpoint was due; None: none yet

    def due(self, epoch: int, now: float) -> bool:
        if epoch % self.every != 0:
            return False
        if self.last is not None and now - self.last < self.interval_s:
            return False
        self.last = now
        return True


def detached_copy(value: Any) -> Any:
    """A copy of a (nested) state dict that later optimizer steps cannot change: tensors are
    cloned, containers copied, everything else shared."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {key: detached_copy(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(detached_copy(item) for item in value)
    return value


class CheckpointStore:
    """Reads and writes one run's checkpoints."""

    def __init__(self, lake: Lake, namespace: str, run_id: str, keep: int):
        self.lake = lake
        self.folder = checkpoint_folder(namespace, run_id)
        self.keep = keep
        self._in_flight: threading.Thread | None = None
        self._failure: BaseException | None = None

    def save_in_background(self, epoch: int, state: dict[str, Any]) -> None:
        """Copy `state` and write it as the checkpoint of `epoch` on a background thread. The
        training thread pays only for the copy; serialising, hashing and the lake's durable
        write (an fsync per file) overlap the next epoch. One write is in flight at a time, and
        its error is raised by the next save or by `wait`. A process killed mid-write leaves a
        checkpoint without its sidecar, which `latest_valid` skips."""
        self.wait()
        snapshot = detached_copy(state)
        self._in_flight = threading.Thread(
            target=self._write_recording_failure, args=(epoch, snapshot), name="checkpoint"
        )
        self._in_flight.start()

    def _write_recording_failure(self, epoch: int, state: dict[str, Any]) -> None:
        try:
            self.save(epoch, state)
        except BaseException as exc:  # handed to the training thread by wait()
            self._failure = exc

    def wait(self) -> None:
        """Block until the checkpoint in flight is written; raise its error if it failed."""
        if self._in_flight is not None:
            self._in_flight.join()
            self._in_flight = None
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure

    def _path(self, epoch: int) -> str:
        return f"{self.folder}/epoch-{epoch}.pt"

    def epochs(self) -> list[int]:
        found = []
        for rel in self.lake.list_files(self.folder):
            match = _NAME.search(rel)
            if match:
                found.append(int(match.group(1)))
        return sorted(found)

    def save(self, epoch: int, state: dict[str, Any]) -> str:
        import torch

        buffer = io.BytesIO()
        torch.save({"epoch": epoch, **state}, buffer)
        data = buffer.getvalue()
        path = self._path(epoch)
        self.lake.write_bytes(path, data)
        # The sidecar goes last: it is what makes the checkpoint complete.
        self.lake.write_bytes(f"{path}.sha256", hashlib.sha256(data).hexdigest().encode())
        self._prune()
        return self.lake.uri(path)

    def _prune(self) -> None:
        if self.lake.scheme != "file":
            return  # object stores: a lifecycle rule on runs/ expires old checkpoints
        for epoch in epochs_to_delete(self.epochs(), self.keep):
            for suffix in (".sha256", ""):  # sidecar first: a half-deleted one reads incomplete
                self.lake.local_path(self._path(epoch) + suffix).unlink(missing_ok=True)

    def load(self, epoch: int) -> Checkpoint:
        import torch

        path = self._path(epoch)
        uri = self.lake.uri(path)
        try:
            expected = self.lake.read_bytes(f"{path}.sha256").decode().strip()
        except LakeError as exc:
            raise CheckpointError(f"{uri}: incomplete (no sha256 sidecar)") from exc
        data = self.lake.read_bytes(path)
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise CheckpointError(
                f"{uri}: corrupted (sha256 {actual[:12]}… does not match {expected[:12]}…)"
            )
        try:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:  # a valid digest of unreadable bytes: written by a bad version
            raise CheckpointError(f"{uri}: unreadable ({exc})") from exc
        return Checkpoint(epoch=int(state["epoch"]), state=state, path=uri)

    def latest_valid(self) -> Checkpoint | None:
        """The newest checkpoint that verifies; each bad one is logged and skipped."""
        for epoch in reversed(self.epochs()):
            try:
                return self.load(epoch)
            except CheckpointError as exc:
                log.error("%s; falling back to the previous checkpoint", exc)
        return None
