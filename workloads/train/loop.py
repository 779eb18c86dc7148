"""The training loop: one function used by a plain run, every DDP worker and every Ray Tune trial.

Reproducible by construction: weights are seeded before the model is built, each epoch's data order
comes from a generator seeded with (seed, epoch) and dropout from (seed, epoch, rank), so a run
resumed from a checkpoint ends with the same weights as one that never stopped."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from neuraxis.workloads.train.checkpoint import CheckpointSchedule, CheckpointStore
from neuraxis.workloads.train.data import TabularData
from neuraxis.workloads.train.models import ModelConfig, TrainableModel, build_model

log = logging.getLogger(__name__)

EpochCallback = Callable[[dict[str, float]], None]


@dataclass(frozen=True)
class TrainSettings:
    epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    checkpoint_every: int = 1
    # Seconds at least between two checkpoints (TrainingJob's default is 30; here 0: every
    # `checkpoint_every`-th epoch).
    checkpoint_interval_s: float = 0.0
    device: str = "cpu"


@dataclass(frozen=True)
class DistContext:
    """This process's place in a data-parallel group (world_size 1 = no DDP)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass(frozen=True)
class WarmStart:
    """Continue from given weights instead of fresh ones: a federated round starts every site
    from the global model. `proximal_mu` > 0 adds FedProx's mu/2 * ||w - w_start||^2 to the
    loss, which keeps a site's weights near the global ones on skewed data."""

    state: dict[str, torch.Tensor]
    proximal_mu: float = 0.0


@dataclass
class TrainOutcome:
    model: TrainableModel
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from: int | None = None


def shard_indices(
    n_rows: int, epoch: int, seed: int, batch_size: int, ctx: DistContext
) -> list[tuple[torch.Tensor, int]]:
    """This rank's batches for one epoch: a seeded permutation cut into global batches of
    batch_size * world_size, each split round-robin over ranks. With one rank and batch_size B*W
    the global batches are the same, which is why DDP matches a single process. Each batch comes
    with its global size, so the loss can be scaled to the global mean even when the last batch
    does not split evenly."""
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n_rows, generator=gen)
    global_batch = batch_size * ctx.world_size
    batches = []
    for start in range(0, n_rows, global_batch):
        mine = order[start : start + global_batch][ctx.rank :: ctx.world_size]
        if len(mine):
            batches.append((mine, min(global_batch, n_rows - start)))
    return batches


def loss_function(task: str, reduction: str = "mean") -> nn.Module:
    if task == "classification":
        return nn.CrossEntropyLoss(reduction=reduction)
    return nn.MSELoss(reduction=reduction)


def _targets(task: str, logits: torch.Tensor) -> torch.Tensor:
    return logits if task == "classification" else logits.squeeze(1)


def _autocast(device: str) -> AbstractContextManager[Any]:
    # bf16 autocast only on GPU: on CPU it is slower for these small models and changes results.
    if device.startswith("cuda"):
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def evaluate_split(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str, device: str
) -> dict[str, float]:
    """Validation loss and the headline metric on one split."""
    if len(x) == 0:
        return {}
    model.eval()
    with torch.no_grad(), _autocast(device):
        logits = model(x).float()
    loss = loss_function(task)(_targets(task, logits), y).item()
    metrics = {"val_loss": float(loss)}
    if task == "classification":
        metrics["val_accuracy"] = float((logits.argmax(dim=1) == y).float().mean().item())
    else:
        metrics["val_mae"] = float((logits.squeeze(1) - y).abs().mean().item())
    return metrics


def _all_reduce_sum(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(values)
    return values


def feature_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.mean(dim=0), x.std(dim=0, unbiased=False)


def proximal_term(model: nn.Module, anchor: list[torch.Tensor], mu: float) -> torch.Tensor:
    """FedProx: mu/2 * squared distance of the parameters from where the round started."""
    squared = sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor, strict=True))
    return (mu / 2) * torch.as_tensor(squared)


def train_model(
    data: TabularData,
    cfg: ModelConfig,
    settings: TrainSettings,
    *,
    ctx: DistContext | None = None,
    store: CheckpointStore | None = None,
    on_epoch: EpochCallback | None = None,
    warm_start: WarmStart | None = None,
) -> TrainOutcome:
    """Train (or resume) `cfg` on the data's training split; validate on its validation split
    after every epoch. Only rank 0 writes checkpoints; every rank resumes from the same one."""
    ctx = ctx or DistContext()
    device = settings.device
    train_x, train_y = data.train_x.to(device), data.train_y.to(device)
    val_x, val_y = data.val_x.to(device), data.val_y.to(device)
    if len(train_x) == 0:
        raise ValueError(
            "the training split is empty (validationSplit + testSplit too high for the table)"
        )
    mean, std = feature_stats(data.train_x)
    if warm_start is not None:
        # Normalisation is the global model's, not this data's (the same on every site).
        mean, std = warm_start.state["normalize.mean"], warm_start.state["normalize.std"]
    torch.manual_seed(settings.seed)
    model = build_model(cfg, mean, std).to(device)
    anchor: list[torch.Tensor] = []
    if warm_start is not None:
        model.load_state_dict(warm_start.state)
        anchor = [p.detach().clone() for p in model.parameters()]
    mu = warm_start.proximal_mu if warm_start is not None else 0.0
    optimizer = torch.optim.Adam(
        model.parameters(), lr=settings.learning_rate, weight_decay=cfg.weight_decay
    )
    outcome = TrainOutcome(model=model)
    start_epoch = 1
    if store is not None:
        checkpoint = store.latest_valid()
        if checkpoint is not None:
            model.load_state_dict(checkpoint.state["model"])
            optimizer.load_state_dict(checkpoint.state["optimizer"])
            outcome.history = list(checkpoint.state["history"])
            outcome.resumed_from = checkpoint.epoch
            start_epoch = checkpoint.epoch + 1
            log.info("resuming from %s (epoch %d)", checkpoint.path, checkpoint.epoch)
    trained: nn.Module = model
    if ctx.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        trained = DistributedDataParallel(model, device_ids=None if device == "cpu" else [device])
    # Summed per rank and scaled by world / global batch: after DDP averages the gradients over
    # ranks, the step is exactly the one of the mean loss over the global batch.
    criterion = loss_function(data.task, reduction="sum")
    schedule = CheckpointSchedule(settings.checkpoint_every, settings.checkpoint_interval_s)
    try:
        for epoch in range(start_epoch, settings.epochs + 1):
            trained.train()
            torch.manual_seed(settings.seed * 1_000_003 + epoch * 101 + ctx.rank)
            loss_sum = torch.zeros((), device=device)
            seen = 0
            for batch, global_n in shard_indices(
                len(train_x), epoch, settings.seed, settings.batch_size, ctx
            ):
                batch = batch.to(device)
                xb, yb = train_x[batch], train_y[batch]
                optimizer.zero_grad(set_to_none=True)
                with _autocast(device):
                    summed = criterion(_targets(data.task, trained(xb).float()), yb)
                    loss = summed * (ctx.world_size / global_n)
                    if mu > 0:
                        loss = loss + proximal_term(model, anchor, mu)
                loss.backward()
                optimizer.step()
                loss_sum += summed.detach()
                seen += len(batch)
            totals = _all_reduce_sum(
                torch.stack([loss_sum, torch.tensor(float(seen), device=device)]), ctx
            )
            metrics = {
                "epoch": float(epoch),
                "train_loss": float(totals[0].item() / max(totals[1].item(), 1.0)),
            }
            metrics.update(evaluate_split(model, val_x, val_y, data.task, device))
            if not all(math.isfinite(v) for v in metrics.values()):
                raise FloatingPointError(
                    f"epoch {epoch}: non-finite metrics {metrics} (learning rate?)"
                )
            outcome.history.append(metrics)
            if store is not None and ctx.is_main and schedule.due(epoch, time.monotonic()):
                store.save_in_background(
                    epoch,
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "history": outcome.history,
                    },
                )
            if on_epoch is not None:
                on_epoch(metrics)
    finally:
        if store is not None:
            store.wait()  # the last checkpoint is complete before the run reports
    model.eval()
    return outcome
