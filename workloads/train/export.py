"""The model artifact (the contract with serving): `model.pt` (state dict + config), `model.ts`
(TorchScript: float32 [batch, n_features] raw features in signature order -> float32
[batch, n_classes] probabilities or [batch] predictions) and `signature.json`."""

from __future__ import annotations

import io
import warnings
from typing import Any, Literal

import torch
from torch import nn

from neuraxis.workloads.artifact import FeatureSpec, Signature
from neuraxis.workloads.drift import PROFILE, TrainingProfile, profile_bytes
from neuraxis.workloads.train.models import ModelConfig, TrainableModel, build_model, serving_module


def torchscript_bytes(module: nn.Module, n_features: int) -> bytes:
    """Trace `module` (eval mode, CPU) and return the serialised TorchScript."""
    module = module.cpu().eval()
    example = torch.zeros(2, n_features)
    # TorchScript is the serving contract; torch 2.x marks it deprecated in favour of
    # torch.export, which the C++/edge runtimes here cannot load yet.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(  # type: ignore[no-untyped-call]
            module, example, check_inputs=[(torch.zeros(5, n_features),)]
        )
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
    return buffer.getvalue()


def build_signature(
    *,
    features: list[str],
    task: Literal["classification", "regression"],
    classes: list[str],
    label: str,
    architecture: str,
    model_version: str,
) -> Signature:
    return Signature(
        features=[FeatureSpec(name=f) for f in features],
        task=task,
        classes=classes,
        label=label,
        architecture=architecture,
        model_version=model_version,
    )


def artifact_files(
    model: TrainableModel,
    cfg: ModelConfig,
    signature: Signature,
    training: dict[str, Any],
    profile: TrainingProfile | None = None,
) -> dict[str, bytes]:
    """The artifact's files. `training` (lineage, history, hyperparameters, trials) travels in
    model.pt's config so evaluation and the model card need nothing but the artifact; `profile`
    (the training rows' feature distribution, see workloads/drift.py) becomes profile.json."""
    weights = io.BytesIO()
    cpu_state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(
        {
            "state_dict": cpu_state,
            "config": {
                "model": cfg.to_dict(),
                "signature": signature.model_dump(mode="json"),
                "training": training,
            },
        },
        weights,
    )
    files = {
        "model.pt": weights.getvalue(),
        "model.ts": torchscript_bytes(serving_module(model, signature.task), cfg.n_features),
        "signature.json": (signature.model_dump_json(indent=2) + "\n").encode(),
    }
    if profile is not None:
        files[PROFILE] = profile_bytes(profile)
    return files


def load_weights(data: bytes) -> tuple[TrainableModel, dict[str, Any]]:
    """Rebuild the trainable model from model.pt bytes; returns it and the config."""
    payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    config: dict[str, Any] = payload["config"]
    cfg = ModelConfig(**config["model"])
    state = payload["state_dict"]
    model = build_model(cfg, state["normalize.mean"], state["normalize.std"])
    model.load_state_dict(state)
    return model.eval(), config
