"""Ranks and devices under the torchrun command the operator builds: several pods (nodes) with
several processes each, one per GPU. Each process must shard the data by its global rank and
take the GPU of its local rank."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from neuraxis.crds import TrainingJob
from neuraxis.operator.builders.training import ResolvedDataset, build_training_children
from neuraxis.operator.settings import OperatorSettings
from neuraxis.workloads.train.launch import ProcessPlacement, device_for, placement_from_env
from neuraxis.workloads.train.loop import DistContext, shard_indices
from tests.operator.test_builders import _example

PROBE = """
import json, os, sys
from neuraxis.workloads.train.launch import device_for, placement_from_env
p = placement_from_env()
line = {"rank": p.rank, "world": p.world_size, "local": p.local_rank}
line["device"] = device_for(p, "cuda")
with open(os.path.join(sys.argv[1], f"rank-{p.rank}.json"), "w") as out:
    json.dump(line, out)
"""


def test_placement_is_global_rank_and_local_device() -> None:
    # torchrun --nnodes=2 --nproc-per-node=4, second pod, third process.
    env = {"RANK": "6", "WORLD_SIZE": "8", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "4"}
    placement = placement_from_env(env)
    assert placement == ProcessPlacement(rank=6, world_size=8, local_rank=2)
    assert device_for(placement, "cuda") == "cuda:2"
    assert device_for(placement, "cpu") == "cpu"


def test_every_row_goes_to_exactly_one_of_the_ranks_of_all_pods() -> None:
    world = 8  # 2 pods x 4 GPUs
    seen: list[int] = []
    for rank in range(world):
        for rows, _ in shard_indices(1000, 0, 7, 16, DistContext(rank=rank, world_size=world)):
            seen += rows.tolist()
    assert sorted(seen) == list(range(1000))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pod_command(
    command: list[str], node_rank: int, port: int, probe: Path, out: Path
) -> list[str]:
    """The operator's command as pod `node_rank` runs it, with the rendezvous on loopback and
    the training module swapped for a probe that records what each process sees."""
    assert command[0] == "torchrun"
    flags = command[1 : command.index("-m")]
    local = []
    for flag in flags:
        if flag.startswith("--master-addr="):
            flag = "--master-addr=127.0.0.1"
        elif flag.startswith("--master-port="):
            flag = f"--master-port={port}"
        local.append(flag.replace("$(JOB_COMPLETION_INDEX)", str(node_rank)))
    return [sys.executable, "-m", "torch.distributed.run", *local, str(probe), str(out)]


@pytest.mark.engine
def test_the_operators_torchrun_command_gives_each_process_its_rank_and_gpu(
    tmp_path: Path,
) -> None:
    tj: TrainingJob = _example("TrainingJob")
    tj.spec.tuning = None
    tj.spec.resources.workers = 2
    tj.spec.resources.gpus_per_worker = 2
    [job] = [
        c
        for c in build_training_children(tj, ResolvedDataset("d", 1), OperatorSettings())
        if c["kind"] == "Job"
    ]
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    pods = [
        subprocess.Popen(
            _pod_command(command, rank, port, probe, tmp_path),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    logs = [p.communicate(timeout=240)[0] for p in pods]
    assert [p.returncode for p in pods] == [0, 0], "\n".join(logs)
    seen = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(4)]
    assert seen == [
        {"rank": 0, "world": 4, "local": 0, "device": "cuda:0"},
        {"rank": 1, "world": 4, "local": 1, "device": "cuda:1"},
        {"rank": 2, "world": 4, "local": 0, "device": "cuda:0"},
        {"rank": 3, "world": 4, "local": 1, "device": "cuda:1"},
    ]
