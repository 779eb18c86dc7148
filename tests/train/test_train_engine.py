"""Multi-process training and Ray Tune: 2-process DDP against one process, a worker killed with
SIGKILL resuming from its last checkpoint, and a 4-trial search on a task with a known optimum."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from neuraxis.lake import Lake
from neuraxis.workloads.artifact import read_verified
from neuraxis.workloads.train.export import load_weights
from neuraxis.workloads.train.run import run_training

pytestmark = pytest.mark.engine


def run_cli(spec: Path, lake: Lake, run_id: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "neuraxis.workloads.train", "train", "--spec", str(spec)]
    cmd += ["--namespace", "ml", "--run-id", run_id, "--lake", lake.root]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def weights(lake: Lake, folder: str) -> dict[str, torch.Tensor]:
    model, _ = load_weights(read_verified(lake, folder, ["model.pt"])["model.pt"])
    return model.state_dict()


def test_two_ddp_workers_match_one_process(lake: Lake, kit: Any, tmp_path: Path) -> None:
    model = {
        "architecture": "mlp",
        "epochs": 3,
        "learningRate": 0.01,
        "hyperparameters": {"hiddenSize": 16, "layers": 2},
    }
    two = kit.training_job(model={**model, "batchSize": 16}, resources={"workers": 2})
    proc = run_cli(kit.write_spec(tmp_path, two), lake, "ddp2")
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out.decode()[-3000:]
    # One process with the global batch (2 x 16) sees the same batches in the same order.
    one = kit.job(model={**model, "batchSize": 32})
    torch.set_num_threads(1)
    run_training(one, lake, "ml", "ddp1")
    ddp, single = weights(lake, "runs/ml/ddp2/model"), weights(lake, "runs/ml/ddp1/model")
    for key in single:
        assert torch.allclose(ddp[key], single[key], atol=1e-5), key
    result = lake.read_json("runs/ml/ddp2/result.json")
    assert result["outcome"] == "Succeeded"
    history_ddp = [h["val_loss"] for h in result["history"]]
    history_one = [h["val_loss"] for h in lake.read_json("runs/ml/ddp1/result.json")["history"]]
    assert history_ddp == pytest.approx(history_one, rel=1e-4)


def test_worker_killed_mid_run_resumes_from_last_checkpoint(
    lake: Lake, kit: Any, tmp_path: Path
) -> None:
    kit.write_table(lake, "features", rows=3000)
    doc = kit.training_job(
        model={
            "architecture": "mlp",
            "epochs": 30,
            "batchSize": 8,
            "learningRate": 0.005,
            "hyperparameters": {"hiddenSize": 32, "layers": 2},
        },
        checkpoint={"everyEpochs": 1, "keep": 2},
    )
    spec = kit.write_spec(tmp_path, doc)
    proc = run_cli(spec, lake, "killed")
    checkpoints = lake.local_path("runs/ml/killed/checkpoints")
    deadline = time.monotonic() + 180
    while not (checkpoints / "epoch-3.pt.sha256").exists():
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not lake.exists("runs/ml/killed/result.json")
    done = sorted(
        int(p.name.split("-")[1].split(".")[0]) for p in checkpoints.glob("epoch-*.pt.sha256")
    )
    assert len(done) <= 2  # keep: 2
    restarted = run_cli(spec, lake, "killed")
    out, _ = restarted.communicate(timeout=300)
    assert restarted.returncode == 0, out.decode()[-3000:]
    result = lake.read_json("runs/ml/killed/result.json")
    assert result["resumedFromEpoch"] >= done[-1] >= 3
    assert f"resuming from {lake.uri('runs/ml/killed/checkpoints')}" in out.decode()
    assert [h["epoch"] for h in result["history"]] == list(range(1, 31))


def test_four_trial_search_finds_the_better_configuration(lake: Lake, kit: Any) -> None:
    # Known optimum: in 3 epochs a learning rate of 1e-5 cannot move the weights; 0.05 can.
    spec = kit.job(
        model={
            "architecture": "mlp",
            "epochs": 3,
            "batchSize": 32,
            "hyperparameters": {"hiddenSize": 16, "layers": 1},
        },
        tuning={
            "algorithm": "random",
            "scheduler": "fifo",
            "metric": "val_loss",
            "goal": "minimize",
            "maxTrials": 4,
            "parallelTrials": 2,
            "space": {"learningRate": {"type": "choice", "values": ["1e-5", "0.05"]}},
        },
        register={"model": "detector", "versionName": "tuned"},
    )
    result = run_training(spec, lake, "ml", "search")
    assert result is not None
    trials = result["trials"]
    assert len(trials) == 4 and all(t["status"] == "TERMINATED" for t in trials)
    rates = {float(t["hyperparameters"]["learningRate"]) for t in trials}
    assert rates == {1e-5, 0.05}, "the seeded search should try both candidates"
    best = result["bestTrial"]
    assert float(best["hyperparameters"]["learningRate"]) == 0.05
    assert best["metric"] == min(t["metric"] for t in trials)
    assert result["hyperparameters"]["learningRate"] == 0.05  # the exported model used it
    assert result["progress"]["trialsCompleted"] == 4
    assert lake.read_json("runs/ml/search/result.json")["bestTrial"]["id"] == best["id"]
