"""The local bundle cache: the last verified bundles, so an agent starts with the lake unreachable.

    <cache>/bundles/<digest hex>/   model.ts, signature.json, manifest.json (the lake's copy)
    <cache>/current.json            {"uri", "digest", "folder", "previous"}

A bundle folder is written under a temporary name and renamed into place (atomic), and
`current.json` is replaced atomically after it, so a crash leaves the old or the new bundle, never
half of one. Loading re-verifies every file against the manifest (local disks rot too).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from neuraxis.lake import Lake
from neuraxis.workloads.artifact import MANIFEST, read_verified

POINTER = "current.json"


@dataclass(frozen=True)
class CachedBundle:
    uri: str
    digest: str
    folder: str


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


class BundleCache:
    def __init__(self, root: Path):
        self.root = root
        self.bundles = root / "bundles"
        self.bundles.mkdir(parents=True, exist_ok=True)
        for leftover in self.bundles.glob(".tmp-*"):  # a crash mid-store
            shutil.rmtree(leftover, ignore_errors=True)

    def current(self) -> CachedBundle | None:
        try:
            doc = json.loads((self.root / POINTER).read_text())
            return CachedBundle(uri=doc["uri"], digest=doc["digest"], folder=doc["folder"])
        except (OSError, ValueError, KeyError):
            return None

    def find(self, digest: str) -> CachedBundle | None:
        """The cached bundle of `digest` (the current or the previous one), if it is there."""
        current = self.current()
        if current is not None and current.digest == digest:
            return current
        folder = digest.split(":", 1)[-1]
        if not (self.bundles / folder / MANIFEST).exists():
            return None
        return CachedBundle(uri=current.uri if current else "", digest=digest, folder=folder)

    def load(self, bundle: CachedBundle, names: list[str] | None = None) -> dict[str, bytes]:
        """The cached files (`names`, or all of them), verified against the cached manifest
        (ArtifactIntegrityError)."""
        return read_verified(Lake(str(self.root)), f"bundles/{bundle.folder}", names)

    def store(
        self, uri: str, digest: str, files: dict[str, bytes], manifest: bytes
    ) -> CachedBundle:
        """Write a verified bundle and make it current; keeps the previous one, prunes older."""
        folder = digest.split(":", 1)[-1]
        final = self.bundles / folder
        if not (final / MANIFEST).exists():
            tmp = Path(tempfile.mkdtemp(dir=self.bundles, prefix=".tmp-"))
            for name, data in files.items():
                _write_synced(tmp / name, data)
            _write_synced(tmp / MANIFEST, manifest)  # last: a folder without it is incomplete
            _fsync_dir(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
            _fsync_dir(self.bundles)
        previous = self.current()
        keep = {folder} | ({previous.folder} if previous else set())
        pointer = {"uri": uri, "digest": digest, "folder": folder,
                   "previous": previous.folder if previous else None}  # fmt: skip
        tmp_pointer = self.root / f".{POINTER}.tmp"
        _write_synced(tmp_pointer, json.dumps(pointer, sort_keys=True).encode())
        os.replace(tmp_pointer, self.root / POINTER)
        _fsync_dir(self.root)
        for old in self.bundles.iterdir():
            if old.name not in keep and not old.name.startswith(".tmp-"):
                shutil.rmtree(old, ignore_errors=True)
        return CachedBundle(uri=uri, digest=digest, folder=folder)
