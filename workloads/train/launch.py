"""How a training run is laid out over processes.

In a pod the operator starts `torchrun` (an Indexed Job: RANK from the completion index,
MASTER_ADDR the index-0 pod behind the headless Service), so each process finds WORLD_SIZE and
RANK in its environment. Locally, `workers > 1` makes the command re-launch itself under
`torch.distributed.run --standalone` with one process per worker."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class ProcessPlacement:
    rank: int
    world_size: int
    local_rank: int

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def placement_from_env(env: dict[str, str] | None = None) -> ProcessPlacement | None:
    """This process's rank when started by torchrun (or a custom launcher), else None."""
    env = dict(os.environ) if env is None else env
    if "WORLD_SIZE" not in env or "RANK" not in env:
        return None
    return ProcessPlacement(
        rank=int(env["RANK"]),
        world_size=int(env["WORLD_SIZE"]),
        local_rank=int(env.get("LOCAL_RANK", "0")),
    )


def needs_local_launch(workers: int, tuning: bool, placement: ProcessPlacement | None) -> bool:
    """Re-launch under torchrun when several workers are wanted and nobody launched us.
    A search runs its trials in Ray instead, one process each."""
    return workers > 1 and not tuning and placement is None


def torchrun_command(workers: int, module_args: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={workers}",
        "--max-restarts=0",
        "-m",
        "neuraxis.workloads.train",
        *module_args,
    ]


def launch_local(workers: int, module_args: list[str]) -> int:
    """Run `workers` local processes of the train command; returns torchrun's exit code."""
    env = dict(os.environ)
    # Each worker gets its share of the cores instead of all of them (oversubscription).
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    return subprocess.run(torchrun_command(workers, module_args), env=env, check=False).returncode


def backend_for(device: str) -> str:
    return "nccl" if device.startswith("cuda") else "gloo"


def device_for(placement: ProcessPlacement | None, requested: str | None) -> str:
    """cuda:<local rank> when a GPU is there (or asked for), else cpu."""
    import torch

    if requested == "cpu" or (requested is None and not torch.cuda.is_available()):
        return "cpu"
    local = placement.local_rank if placement else 0
    return f"cuda:{local}"
