"""The built-in architectures and their hyperparameters.

Every model maps a float32 [batch, n_features] tensor of RAW feature values to [batch, n_outputs]
logits (or predictions); normalisation with the training split's mean/std is the model's first
layer, so the exported module takes raw values and nobody has to repeat the scaling."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn

Architecture = Literal["mlp", "cnn1d", "transformer"]

# key -> (type, default, lower bound, upper bound, architectures that use it)
_HYPERPARAMETERS: dict[str, tuple[type, float, float, float, tuple[str, ...]]] = {
    "hiddenSize": (int, 64, 1, 4096, ("mlp", "cnn1d", "transformer")),
    "layers": (int, 2, 1, 16, ("mlp", "cnn1d", "transformer")),
    "dropout": (float, 0.0, 0.0, 0.9, ("mlp", "cnn1d", "transformer")),
    "kernelSize": (int, 3, 1, 31, ("cnn1d",)),
    "heads": (int, 2, 1, 16, ("transformer",)),
    "weightDecay": (float, 0.0, 0.0, 1.0, ("mlp", "cnn1d", "transformer")),
}


class HyperparameterError(ValueError):
    """A hyperparameter is unknown or out of range; the message names the spec field."""


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model's modules (stored with the weights)."""

    architecture: Architecture
    n_features: int
    n_outputs: int
    hidden_size: int = 64
    layers: int = 2
    dropout: float = 0.0
    kernel_size: int = 3
    heads: int = 2
    weight_decay: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _snake(key: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in key)


def parse_hyperparameters(architecture: str, raw: dict[str, Any]) -> dict[str, Any]:
    """Validate `spec.model.hyperparameters` for `architecture`; returns snake_case settings with
    defaults filled in. Unknown keys, wrong types and out-of-range values raise with the field."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        where = f"spec.model.hyperparameters.{key}"
        if key not in _HYPERPARAMETERS:
            known = ", ".join(k for k, v in _HYPERPARAMETERS.items() if architecture in v[4])
            raise HyperparameterError(f"{where}: unknown for {architecture} (known: {known})")
        kind, _default, low, high, archs = _HYPERPARAMETERS[key]
        if architecture not in archs:
            raise HyperparameterError(f"{where}: not used by {architecture}")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise HyperparameterError(f"{where}: must be a number, got {value!r}")
        if kind is int and not float(value).is_integer():
            raise HyperparameterError(f"{where}: must be an integer, got {value!r}")
        if not low <= value <= high:
            raise HyperparameterError(f"{where}: {value} is outside [{low}, {high}]")
        out[_snake(key)] = kind(value)
    for key, (kind, default, *_rest, archs) in _HYPERPARAMETERS.items():
        if architecture in archs:
            out.setdefault(_snake(key), kind(default))
    if architecture == "transformer" and out["hidden_size"] % out["heads"]:
        raise HyperparameterError(
            f"spec.model.hyperparameters.hiddenSize: {out['hidden_size']} must be divisible "
            f"by heads ({out['heads']})"
        )
    return out


def model_config(
    architecture: str, hyperparameters: dict[str, Any], n_features: int, n_outputs: int
) -> ModelConfig:
    if architecture not in ("mlp", "cnn1d", "transformer"):
        raise HyperparameterError(f"spec.model.architecture: unknown {architecture!r}")
    settings = parse_hyperparameters(architecture, hyperparameters)
    return ModelConfig(
        architecture=architecture,  # type: ignore[arg-type]
        n_features=n_features,
        n_outputs=n_outputs,
        **settings,
    )


class Normalize(nn.Module):
    """(x - mean) / std with the training split's statistics, frozen as buffers."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean.clone().float())
        # A constant column would divide by zero; it carries no signal, so scale it by 1.
        self.register_buffer("std", torch.where(std > 1e-8, std, torch.ones_like(std)).float())

    mean: torch.Tensor
    std: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        blocks: list[nn.Module] = []
        width = cfg.n_features
        for _ in range(cfg.layers):
            blocks += [nn.Linear(width, cfg.hidden_size), nn.ReLU(), nn.Dropout(cfg.dropout)]
            width = cfg.hidden_size
        blocks.append(nn.Linear(width, cfg.n_outputs))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


class CNN1d(nn.Module):
    """The feature vector as a 1-channel sequence of length n_features."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        blocks: list[nn.Module] = []
        channels = 1
        for _ in range(cfg.layers):
            blocks += [
                nn.Conv1d(channels, cfg.hidden_size, cfg.kernel_size, padding=cfg.kernel_size // 2),
                nn.ReLU(),
                nn.Dropout(cfg.dropout),
            ]
            channels = cfg.hidden_size
        self.conv = nn.Sequential(*blocks)
        self.head = nn.Linear(cfg.hidden_size, cfg.n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x.unsqueeze(1)).mean(dim=2)
        out: torch.Tensor = self.head(h)
        return out


class Transformer(nn.Module):
    """Each feature is a token: its value times a learned embedding plus a position embedding."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.value_embedding = nn.Linear(1, cfg.hidden_size)
        self.position = nn.Parameter(torch.zeros(1, cfg.n_features, cfg.hidden_size))
        layer = nn.TransformerEncoderLayer(
            d_model=cfg.hidden_size,
            nhead=cfg.heads,
            dim_feedforward=cfg.hidden_size * 2,
            dropout=cfg.dropout,
            batch_first=True,
        )
        self.encoder = nn.TransformerEncoder(
            layer, num_layers=cfg.layers, enable_nested_tensor=False
        )
        self.head = nn.Linear(cfg.hidden_size, cfg.n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.value_embedding(x.unsqueeze(2)) + self.position
        out: torch.Tensor = self.head(self.encoder(tokens).mean(dim=1))
        return out


class TrainableModel(nn.Module):
    """Normalisation followed by the architecture: raw features in, logits out."""

    def __init__(self, cfg: ModelConfig, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.normalize = Normalize(mean, std)
        core: nn.Module
        if cfg.architecture == "mlp":
            core = MLP(cfg)
        elif cfg.architecture == "cnn1d":
            core = CNN1d(cfg)
        else:
            core = Transformer(cfg)
        self.core = core

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.core(self.normalize(x))
        return out


class ClassifierOutput(nn.Module):
    """The served contract for classification: class probabilities [batch, n_classes]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x).float(), dim=1)


class RegressorOutput(nn.Module):
    """The served contract for regression: predictions [batch]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x).float().squeeze(1)
        return out


def build_model(cfg: ModelConfig, mean: torch.Tensor, std: torch.Tensor) -> TrainableModel:
    return TrainableModel(cfg, mean, std)


def serving_module(model: nn.Module, task: str) -> nn.Module:
    """Wrap logits into what the exported artifact returns for `task`."""
    return ClassifierOutput(model) if task == "classification" else RegressorOutput(model)
