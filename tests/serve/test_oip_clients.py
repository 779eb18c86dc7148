"""The unmodified real Open Inference Protocol clients (tritonclient.http, tritonclient.grpc,
kserve.InferenceRESTClient, kserve.InferenceGRPCClient) against the inference server and the edge
agent, real processes on loopback: liveness, readiness, metadata, inference answers equal to the
model's own output, and refusals that name the field."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from neuraxis.lake import Lake
from neuraxis.workloads.artifact import read_verified

from .conftest import (
    CLASSES,
    REPO,
    ServerProcess,
    TinyClassifier,
    free_port,
    load_scripted,
    metric_value,
    write_model,
)

pytestmark = pytest.mark.engine

CLIENTS = Path(__file__).with_name("oip_clients.py")
SERVE_FOLDER = "models/default/tiny/v1"
EDGE_FOLDER = "edge/default/tiny/v1"


@dataclass
class Served:
    server: ServerProcess
    grpc_port: int
    model_ts: bytes

    def address(self, client: str) -> str:
        if client == "kserve-rest":
            return self.server.url
        port = self.grpc_port if client.endswith("grpc") else self.server.port
        return f"127.0.0.1:{port}"


def _start(args: list[str], log: Path) -> tuple[ServerProcess, int]:
    port, grpc_port = free_port(), free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, *args, "--port", str(port), "--grpc-port", str(grpc_port)],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )  # fmt: skip
    server = ServerProcess(proc, port, log)
    server.wait_ready()
    return server, grpc_port


@pytest.fixture(scope="module", params=["serve", "edge"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    lake_dir = tmp_path_factory.mktemp("lake")
    lake = Lake(str(lake_dir))
    log = tmp_path_factory.mktemp("log") / "server.log"
    if request.param == "serve":
        write_model(lake, SERVE_FOLDER, TinyClassifier(seed=1), version="v1")
        args = ["-m", "neuraxis.workloads.serve", "--model", f"file://{lake_dir}/{SERVE_FOLDER}"]
        folder = SERVE_FOLDER
    else:
        write_model(lake, EDGE_FOLDER, TinyClassifier(seed=2), version="v1", quantize=True)
        cache = tmp_path_factory.mktemp("cache")
        args = [
            "-m", "neuraxis.workloads.edge", "--bundle", f"file://{lake_dir}/{EDGE_FOLDER}",
            "--cache-dir", str(cache), "--node", "n1",
        ]  # fmt: skip
        folder = EDGE_FOLDER
    server, grpc_port = _start(args, log)
    model_ts = read_verified(lake, folder, ["model.ts"])["model.ts"]
    yield Served(server, grpc_port, model_ts)
    server.stop()


def run_client(client: str, served: Served, rows: list[list[float]]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(CLIENTS), client, served.address(client), "tiny", "v1",
         json.dumps(rows)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, f"{client} failed:\n{proc.stderr[-4000:]}"
    seen: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return seen


def expected_answer(served: Served, rows: list[list[float]]) -> tuple[torch.Tensor, list[str]]:
    probabilities = load_scripted(served.model_ts)(torch.tensor(rows, dtype=torch.float32))
    labels = [CLASSES[int(i)] for i in probabilities.argmax(dim=1)]
    return probabilities, labels


def assert_same_answer(got: dict[str, Any], probabilities: torch.Tensor, labels: list[str]) -> None:
    assert torch.allclose(torch.tensor(got["probabilities"]), probabilities, atol=1e-6), got
    assert got["label"] == labels


def rows_for(seed: int) -> list[list[float]]:
    rng = random.Random(seed)
    return [[rng.gauss(70, 15), rng.gauss(0.5, 0.3), rng.gauss(1.0, 0.2)] for _ in range(7)]


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_tritonclient(served: Served, kind: str) -> None:
    rows = rows_for(11)
    probabilities, labels = expected_answer(served, rows)
    seen = run_client(f"triton-{kind}", served, rows)
    assert seen["live"] and seen["ready"] and seen["model_ready"] and seen["model_ready_version"]
    assert seen["server_metadata"]["name"] == "neuraxis"
    assert seen["model_metadata"]["name"] == "tiny" and seen["model_metadata"]["versions"] == ["v1"]
    [tensor] = seen["model_metadata"]["inputs"]
    assert tensor["datatype"] == "FP32" and [int(d) for d in tensor["shape"]] == [-1, 3]
    assert_same_answer(seen["infer"], probabilities, labels)
    # Only the output asked for, with the id echoed.
    assert list(seen["infer_chosen"]) == ["probabilities"]
    assert torch.allclose(
        torch.tensor(seen["infer_chosen"]["probabilities"]), probabilities, atol=1e-6
    )
    assert seen["infer_chosen_id"] == "req-42"
    errors = seen["errors"]
    not_found = "StatusCode.NOT_FOUND" if kind == "grpc" else "404"
    assert errors["unknown_version"].startswith(not_found)
    assert "version: 'nope' of 'tiny' not found" in errors["unknown_version"]
    invalid = "StatusCode.INVALID_ARGUMENT" if kind == "grpc" else "400"
    assert errors["bad_shape"].startswith(invalid)
    assert "inputs[0].shape: expected [n, 3], got [3, 7]" in errors["bad_shape"]
    assert (
        errors["unknown_model"].startswith(not_found)
        and "'nobody' not found" in errors["unknown_model"]
    )


@pytest.mark.parametrize("kind", ["rest", "grpc"])
def test_kserve_client(served: Served, kind: str) -> None:
    rows = rows_for(12)
    probabilities, labels = expected_answer(served, rows)
    seen = run_client(f"kserve-{kind}", served, rows)
    assert seen["live"] and seen["ready"] and seen["model_ready"]
    for name in ("infer", "infer_json"):  # binary tensors and JSON data
        assert_same_answer(seen[name], probabilities, labels)
        assert seen[f"{name}_id"] == "k-1"
    assert "inputs[0].shape: expected [n, 3], got [3, 7]" in seen["errors"]["bad_shape"]
    if kind == "grpc":
        assert seen["errors"]["bad_shape"].startswith("StatusCode.INVALID_ARGUMENT")


def test_grpc_calls_are_counted_with_the_rest(served: Served) -> None:
    """After the gRPC clients above: ModelInfer in the same request metrics, by outcome."""
    rows = rows_for(13)
    run_client("triton-grpc", served, rows)
    text = served.server.metrics()
    ok = metric_value(text, "neuraxis_serve_requests_total", route="grpc:ModelInfer", code="200")
    refused = metric_value(
        text, "neuraxis_serve_requests_total", route="grpc:ModelInfer", code="400"
    )
    assert ok is not None and ok >= 2 and refused is not None and refused >= 1


def test_neuraxis_run_smoke_test_answers_over_both_protocols(tmp_path: Path) -> None:
    from neuraxis.local.smoke import smoke_test

    lake = Lake(str(tmp_path / "lake"))
    write_model(lake, SERVE_FOLDER, TinyClassifier(seed=3), version="v1")
    result = smoke_test(f"file://{tmp_path}/lake/{SERVE_FOLDER}", "tiny", lake, tmp_path / "work")
    assert result.passed, result.message
    assert "gRPC ModelInfer OK" in result.message
