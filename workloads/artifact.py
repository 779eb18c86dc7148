"""Model artifacts and edge bundles: a folder of files in the lake plus a `manifest.json` with the
sha256 of every file. The manifest is written last, so a folder without one is incomplete and is
never loaded; the artifact digest is the sha256 of the manifest's file list, so it changes when
any file changes.

    models/<ns>/<model>/<version>/    model.pt (weights), model.ts (TorchScript), signature.json,
                                      card.md, card.json, plots/*.png, manifest.json
    edge/<ns>/<model>/<version>/      model.ts (int8), signature.json, manifest.json
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

from neuraxis.lake import Lake, LakeError

MANIFEST = "manifest.json"
SIGNATURE = "signature.json"


class ArtifactIntegrityError(RuntimeError):
    """An artifact is incomplete or a file does not match its recorded sha256."""


class FeatureSpec(BaseModel):
    """One model input column."""

    name: str
    dtype: Literal["float32"] = "float32"


class Signature(BaseModel):
    """What a model takes and returns; servers validate requests against it."""

    features: list[FeatureSpec] = Field(min_length=1)
    task: Literal["classification", "regression"]
    classes: list[str] = Field(default_factory=list, description="Class labels (classification).")
    label: str
    architecture: str
    model_version: str = Field(description="Registry version name, reported in metrics.")

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]


@dataclass(frozen=True)
class ArtifactRef:
    """Where an artifact is and what its content is."""

    uri: str
    digest: str
    size_bytes: int


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _manifest_digest(files: dict[str, str]) -> str:
    listing = "".join(f"{name} {digest}\n" for name, digest in sorted(files.items()))
    return sha256_digest(listing.encode())


def write_artifact(lake: Lake, folder: str, files: dict[str, bytes]) -> ArtifactRef:
    """Write every file, then the manifest that makes the folder complete."""
    if MANIFEST in files:
        raise ValueError(f"{MANIFEST} is written by write_artifact itself")
    digests = {}
    for name in sorted(files):
        lake.write_bytes(f"{folder}/{name}", files[name])
        digests[name] = sha256_digest(files[name])
    size = sum(len(data) for data in files.values())
    digest = _manifest_digest(digests)
    lake.write_json(f"{folder}/{MANIFEST}", {"files": digests, "digest": digest, "sizeBytes": size})
    return ArtifactRef(uri=lake.uri(folder), digest=digest, size_bytes=size)


def read_manifest(lake: Lake, folder: str) -> dict[str, str]:
    try:
        manifest = lake.read_json(f"{folder}/{MANIFEST}")
    except LakeError as exc:
        raise ArtifactIntegrityError(f"{lake.uri(folder)}: no {MANIFEST} (incomplete)") from exc
    files: dict[str, str] = manifest["files"]
    if manifest.get("digest") != _manifest_digest(files):
        raise ArtifactIntegrityError(f"{lake.uri(folder)}/{MANIFEST}: digest does not match")
    return files


def read_verified(lake: Lake, folder: str, names: list[str] | None = None) -> dict[str, bytes]:
    """Read files of an artifact, checking each against the manifest. `names` limits which."""
    files = read_manifest(lake, folder)
    wanted = names if names is not None else sorted(files)
    out = {}
    for name in wanted:
        if name not in files:
            raise ArtifactIntegrityError(f"{lake.uri(folder)}: {name} is not in the manifest")
        data = lake.read_bytes(f"{folder}/{name}")
        if sha256_digest(data) != files[name]:
            raise ArtifactIntegrityError(
                f"{lake.uri(folder)}/{name}: sha256 mismatch (tampered or corrupted)"
            )
        out[name] = data
    return out


def artifact_digest(lake: Lake, folder: str) -> str:
    """The digest recorded in the manifest (checked against its file list)."""
    return _manifest_digest(read_manifest(lake, folder))


def read_signature(data: bytes) -> Signature:
    return Signature.model_validate(json.loads(data))
