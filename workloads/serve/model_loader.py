"""Load a model artifact for serving, only after its sha256 manifest checks out.

An artifact is a lake folder (see `neuraxis.workloads.artifact`): `model.ts` takes float32
[batch, n_features] raw feature values in signature order and returns class probabilities
[batch, n_classes] (classification) or predictions [batch] (regression). `profile.json` (the
training profile, optional) is the drift reference and the explanation baseline.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from neuraxis.lake import Lake
from neuraxis.workloads.artifact import (
    SIGNATURE,
    ArtifactIntegrityError,
    Signature,
    read_manifest,
    read_signature,
    read_verified,
    verify_digest,
)
from neuraxis.workloads.drift import PROFILE, TrainingProfile, parse_profile

if TYPE_CHECKING:
    import torch

MODEL_FILE = "model.ts"
SERVED_FILES = [MODEL_FILE, SIGNATURE]
OPTIONAL_FILES = [PROFILE]  # served when the manifest lists them


def served_files(manifest: dict[str, str]) -> list[str]:
    """The files to read and verify for serving, given the manifest's file list."""
    return SERVED_FILES + [name for name in OPTIONAL_FILES if name in manifest]


# models/<ns>/<model>/<version>[/<run-id>] or edge/... at the end of a URI (run-unique folders
# since artifacts became immutable; the shorter form is what earlier runs wrote).
_LAYOUT = re.compile(
    r"^(?P<root>.*?)/?(?P<kind>models|edge)/(?P<ns>[^/]+)/(?P<model>[^/]+)/[^/]+(/[^/]+)?$"
)


class ModelLoadError(RuntimeError):
    """The artifact cannot be served; the message says which file and why, `reason` the kind
    (ArtifactChanged: not the pinned artifact, never served)."""

    def __init__(self, message: str, reason: str = "ModelLoadFailed"):
        super().__init__(message)
        self.reason = reason


def split_artifact_uri(uri: str) -> tuple[str, str]:
    """`(lake root, folder)` for an artifact folder given as a path, file:// or s3:// URI."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file", "s3", "s3a"):
        raise ModelLoadError(
            f"{uri}: unsupported scheme {parsed.scheme!r} (path, file:// or s3://)"
        )
    trimmed = uri.rstrip("/")
    head, sep, folder = trimmed.rpartition("/")
    if not sep or not folder:
        return ".", trimmed
    if parsed.scheme in ("s3", "s3a") and head.endswith(":/"):
        raise ModelLoadError(f"{uri}: an s3 artifact URI needs a folder inside the bucket")
    return head or "/", folder


def lake_root_of(uri: str) -> str | None:
    """The lake root of an artifact URI that follows the lake layout, else None."""
    match = _LAYOUT.match(uri.rstrip("/"))
    if match is None:
        return None
    return match["root"] or "."


def namespace_of(uri: str) -> str | None:
    """The namespace from the lake layout (`.../edge/<ns>/<model>/<version>`), else None."""
    match = _LAYOUT.match(uri.rstrip("/"))
    return match["ns"] if match else None


def model_name_of(uri: str) -> str:
    """The model name from the lake layout (`.../models/<ns>/<model>/<version>`), else the
    folder name."""
    match = _LAYOUT.match(uri.rstrip("/"))
    return match["model"] if match else split_artifact_uri(uri)[1]


@dataclass(frozen=True)
class LoadedModel:
    """A verified, loaded model ready for `forward`."""

    name: str
    signature: Signature
    digest: str
    module: Any  # torch.jit.ScriptModule (kept Any: torch is imported lazily)
    profile: TrainingProfile | None = None
    # Why `:explain` cannot run on this model (no input gradient: an int8 bundle), else None.
    explain_error: str | None = None

    @property
    def version(self) -> str:
        return self.signature.model_version

    def forward(self, rows: list[list[float]]) -> torch.Tensor:
        """Run the model on a batch; call from one worker thread."""
        import torch

        with torch.inference_mode():
            out: torch.Tensor = self.module(torch.tensor(rows, dtype=torch.float32))
        return out


def check_output_shape(signature: Signature, shape: tuple[int, ...], batch: int) -> None:
    """Refuse a model whose output does not match what its signature promises."""
    if signature.task == "classification":
        n_classes = len(signature.classes) or None
        ok = len(shape) == 2 and shape[0] == batch and (n_classes is None or shape[1] == n_classes)
        expected = f"[{batch}, {n_classes or 'n_classes'}]"
    else:
        ok = shape in ((batch,), (batch, 1))
        expected = f"[{batch}]"
    if not ok:
        raise ModelLoadError(
            f"{MODEL_FILE}: output shape {list(shape)} does not match the signature "
            f"({signature.task}: expected {expected})"
        )


def model_from_files(name: str, digest: str, files: dict[str, bytes]) -> LoadedModel:
    """Build a LoadedModel from already verified file contents; checks it runs."""
    import torch

    try:
        signature = read_signature(files[SIGNATURE])
    except Exception as exc:
        raise ModelLoadError(f"{SIGNATURE}: invalid ({exc})") from exc
    try:
        with warnings.catch_warnings():  # TorchScript is the artifact contract; torch nags
            warnings.simplefilter("ignore", FutureWarning)
            raw = io.BytesIO(files[MODEL_FILE])
            module = torch.jit.load(raw, map_location="cpu")  # type: ignore[no-untyped-call]
    except Exception as exc:
        raise ModelLoadError(f"{MODEL_FILE}: not a loadable TorchScript model ({exc})") from exc
    module.eval()
    profile = None
    if PROFILE in files:
        try:
            profile = parse_profile(files[PROFILE])
        except Exception as exc:
            raise ModelLoadError(f"{PROFILE}: invalid ({exc})") from exc
        if [f.name for f in profile.features] != signature.feature_names:
            raise ModelLoadError(f"{PROFILE}: features differ from {SIGNATURE}'s")
    model = LoadedModel(name=name, signature=signature, digest=digest, module=module)
    try:  # a warm-up forward also proves the model accepts the signature's input width
        out = model.forward([[0.0] * len(signature.features)] * 2)
    except Exception as exc:
        raise ModelLoadError(
            f"{MODEL_FILE}: forward on [2, {len(signature.features)}] failed ({exc})"
        ) from exc
    check_output_shape(signature, tuple(out.shape), 2)
    from neuraxis.workloads.explain import gradient_error

    explain_error = gradient_error(module, len(signature.features))
    return replace(model, profile=profile, explain_error=explain_error)


def load_model(
    uri: str, name: str | None = None, expected_digest: str | None = None
) -> LoadedModel:
    """Verify the artifact at `uri` (every served file against the manifest, and the manifest
    against `expected_digest` when given), then load it."""
    root, folder = split_artifact_uri(uri)
    lake = Lake(root)
    try:
        digest = verify_digest(lake, folder, expected_digest)
        files = read_verified(lake, folder, served_files(read_manifest(lake, folder)))
    except ArtifactIntegrityError as exc:
        raise ModelLoadError(f"refusing to serve: {exc}", exc.reason) from exc
    except Exception as exc:  # the lake itself failed (unreachable, permissions)
        raise ModelLoadError(f"{uri}: cannot read the artifact ({exc})") from exc
    return model_from_files(name or model_name_of(uri), digest, files)
