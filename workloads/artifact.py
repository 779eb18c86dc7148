"""Model artifacts and edge bundles: a folder of files in the lake plus a `manifest.json` with the
sha256 of every file. The manifest is written last, so a folder without one is incomplete and is
never loaded; the artifact digest is the sha256 of the manifest's file list, so it changes when
any model file changes.

Every run writes its own folder (the run id is in the path), so retraining or re-bundling never
touches the files of an earlier version:

    models/<ns>/<model>/<version>/<run-id>/   model.pt (weights), model.ts (TorchScript),
                                              signature.json, profile.json, manifest.json,
                                              card/card.json, card/card.md, card/plots/*.png
    edge/<ns>/<model>/<version>/<run-id>/     model.ts (int8 or fp32), signature.json, manifest.json

(a TrainingJob without `register` writes runs/<ns>/<run-id>/model/ instead.)

manifest.json:

    {"files": {"model.pt": "sha256:...", ...},   the model files; `digest` covers exactly these
     "digest": "sha256:...", "sizeBytes": n,
     "card": {"files": {"card/card.md": "sha256:...", ...}, "artifactDigest": "sha256:..."}}

The ModelVersion pins `digest` when it is evaluated; evaluation, serving, the bundle and (for
bundles) the edge agent refuse an artifact whose digest or files differ (ArtifactChangedError,
reason ArtifactChanged). The card comes later (evaluation writes it, the bundle adds to it) and
sits in its own `card` section, so adding it leaves the pinned digest as it was; the card and the
manifest cover each other: the manifest lists every card file's sha256, and card.json records the
artifact digest.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

from neuraxis.lake import Lake, LakeError

MANIFEST = Lake.ARTIFACT_MANIFEST
SIGNATURE = "signature.json"
CARD_FOLDER = Lake.CARD_FOLDER
ARTIFACT_CHANGED = "ArtifactChanged"


class ArtifactIntegrityError(RuntimeError):
    """An artifact is incomplete or a file does not match its recorded sha256."""

    reason = "ArtifactInvalid"


class ArtifactChangedError(ArtifactIntegrityError):
    """The artifact is not the one that was pinned: its digest differs from the expected one, or
    a file differs from its manifest. It is never loaded."""

    reason = ARTIFACT_CHANGED


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
            raise ArtifactChangedError(
                f"{lake.uri(folder)}/{name}: sha256 mismatch (tampered or corrupted)"
            )
        out[name] = data
    return out


def artifact_digest(lake: Lake, folder: str) -> str:
    """The digest recorded in the manifest (checked against its file list)."""
    return _manifest_digest(read_manifest(lake, folder))


def failure_reason(exc: BaseException, default: str) -> str:
    """A workload's failure reason: ArtifactChanged for a changed artifact, else `default`."""
    return ARTIFACT_CHANGED if isinstance(exc, ArtifactChangedError) else default


def verify_digest(lake: Lake, folder: str, expected: str | None) -> str:
    """The artifact's digest; ArtifactChangedError when `expected` is given and differs."""
    digest = artifact_digest(lake, folder)
    if expected is not None and digest != expected:
        raise ArtifactChangedError(
            f"{lake.uri(folder)}: digest {digest} is not the pinned {expected} (the artifact "
            "changed after it was evaluated)"
        )
    return digest


def verify_artifact(lake: Lake, folder: str, expected: str | None) -> str:
    """Check the digest against `expected` and every model file against the manifest."""
    digest = verify_digest(lake, folder, expected)
    read_verified(lake, folder)
    return digest


def write_card_files(lake: Lake, folder: str, files: dict[str, bytes]) -> dict[str, str]:
    """Write card files (names relative to card/) and list them in the manifest's `card`
    section with the artifact digest; the model files and `digest` stay as they are. Files
    listed earlier and not given again keep their entries (the bundle adds to the card)."""
    manifest = lake.read_json(f"{folder}/{MANIFEST}")
    digest = artifact_digest(lake, folder)
    listed: dict[str, str] = dict((manifest.get("card") or {}).get("files") or {})
    for name in sorted(files):
        path = f"{CARD_FOLDER}/{name}"
        lake.write_bytes(f"{folder}/{path}", files[name])
        listed[path] = sha256_digest(files[name])
    manifest["card"] = {"files": dict(sorted(listed.items())), "artifactDigest": digest}
    lake.write_json(f"{folder}/{MANIFEST}", manifest)
    return listed


def verify_card(lake: Lake, folder: str) -> dict[str, str]:
    """The card files of the manifest, each checked; the card must name this artifact."""
    manifest = lake.read_json(f"{folder}/{MANIFEST}")
    card = manifest.get("card") or {}
    if card.get("artifactDigest") != artifact_digest(lake, folder):
        raise ArtifactChangedError(f"{lake.uri(folder)}: the card is for another artifact")
    for path, expected in sorted((card.get("files") or {}).items()):
        if sha256_digest(lake.read_bytes(f"{folder}/{path}")) != expected:
            raise ArtifactChangedError(f"{lake.uri(folder)}/{path}: sha256 mismatch")
    return dict(card.get("files") or {})


def read_signature(data: bytes) -> Signature:
    return Signature.model_validate(json.loads(data))
