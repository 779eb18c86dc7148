"""Loading a verified artifact and the data it is judged on (shared by evaluation and the edge
bundle): an evaluation Dataset, or the training job's test split, recomputed with the same split
function, fractions and seed that training used (recorded in model.pt). Training, tuning and
early stopping never saw those rows."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from neuraxis.lake import Lake, LakeError
from neuraxis.workloads.artifact import Signature, read_signature, read_verified, verify_digest
from neuraxis.workloads.train.data import TabularData, read_table

ARTIFACT_FILES = ["model.pt", "model.ts", "signature.json"]


def load_torchscript(data: bytes) -> torch.jit.ScriptModule:
    """TorchScript is the serving contract (torch 2.x warns it is deprecated for torch.export)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module: torch.jit.ScriptModule = torch.jit.load(  # type: ignore[no-untyped-call]
            io.BytesIO(data)
        )
    return module.eval()


@dataclass
class LoadedArtifact:
    folder: str
    files: dict[str, bytes]
    signature: Signature
    config: dict[str, Any]

    @property
    def training(self) -> dict[str, Any]:
        training: dict[str, Any] = self.config.get("training") or {}
        return training

    def torchscript(self) -> torch.jit.ScriptModule:
        return load_torchscript(self.files["model.ts"])


def folder_of(lake: Lake, uri: str) -> str:
    """The lake-relative folder of an artifact URI (it must be inside this lake)."""
    root = lake.root.rstrip("/") + "/"
    if not uri.startswith(root):
        raise LakeError(f"{uri}: not inside the lake {lake.root}")
    return uri[len(root) :].strip("/")


def load_artifact(lake: Lake, folder: str, expected_digest: str | None = None) -> LoadedArtifact:
    """Read model.pt, model.ts and signature.json, each checked against the manifest, and the
    manifest against the pinned `expected_digest` (ArtifactChangedError when either differs)."""
    verify_digest(lake, folder, expected_digest)
    files = read_verified(lake, folder, ARTIFACT_FILES)
    payload = torch.load(io.BytesIO(files["model.pt"]), map_location="cpu", weights_only=True)
    return LoadedArtifact(
        folder=folder,
        files=files,
        signature=read_signature(files["signature.json"]),
        config=payload["config"],
    )


@dataclass
class HeldOut:
    x: torch.Tensor
    y: torch.Tensor
    data: TabularData
    description: str
    dataset: dict[str, Any]


def load_heldout(
    lake: Lake,
    namespace: str,
    artifact: LoadedArtifact,
    *,
    dataset: str | None = None,
    version: int | None = None,
) -> HeldOut:
    """Every row of `dataset`, or else the test split of the training data."""
    sig = artifact.signature
    common: dict[str, Any] = {
        "label": sig.label,
        "task": sig.task,
        "features": sig.feature_names,
        "classes": sig.classes if sig.task == "classification" else None,
    }
    if dataset is not None:
        data = read_table(lake, namespace, dataset, version=version, **common)
        lineage = data.lineage
        return HeldOut(
            data.x,
            data.y,
            data,
            f"all rows of {dataset} v{lineage.version if lineage else '?'}",
            {**_lineage_dict(data), "split": "all"},
        )
    training = artifact.training
    trained_on = training.get("dataset")
    where = lake.uri(artifact.folder)
    if not trained_on:
        raise ValueError(
            f"{where}: no training lineage in model.pt; "
            "give an evaluation dataset (spec.evaluation.datasetRef)"
        )
    test_split = float(training.get("testSplit") or 0.0)
    if test_split <= 0:
        raise ValueError(
            f"{where}: the training job held out no test rows (spec.testSplit 0, or trained "
            "before test splits existed); give an evaluation dataset "
            "(spec.evaluation.datasetRef) or retrain with spec.testSplit > 0"
        )
    data = read_table(
        lake,
        namespace,
        trained_on["name"],
        version=int(trained_on["version"]),
        validation_split=float(training["validationSplit"]),
        test_split=test_split,
        seed=int(training.get("splitSeed", training["seed"])),
        **common,
    )
    description = f"test split ({test_split:.0%}) of {trained_on['name']} v{trained_on['version']}"
    return HeldOut(
        data.test_x, data.test_y, data, description, {**_lineage_dict(data), "split": "test"}
    )


def _lineage_dict(data: TabularData) -> dict[str, Any]:
    lineage = data.lineage
    return (
        {}
        if lineage is None
        else {
            "name": lineage.name,
            "version": lineage.version,
            "digest": lineage.digest,
        }
    )
