"""The serving smoke test of `neuraxis run`: start the same server the predictor Deployment
runs (HTTP and gRPC), ask its metadata, send one prediction over each protocol, and stop it
gracefully."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from neuraxis.lake import Lake
from neuraxis.workloads.result import TERMINATION_LOG_ENV, read_compact_result


@dataclass(frozen=True)
class SmokeResult:
    passed: bool
    message: str
    reason: str = "SmokeTestFailed"  # when not passed: ArtifactChanged if the server refused


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def smoke_test(
    artifact_uri: str,
    model: str,
    lake: Lake,
    work_dir: Path,
    timeout: float = 120.0,
    digest: str | None = None,
) -> SmokeResult:
    """`digest`: the pinned artifact digest, passed to the server as the predictor gets it."""
    port, grpc_port = _free_port(), _free_port()
    base = f"http://127.0.0.1:{port}"
    work_dir.mkdir(parents=True, exist_ok=True)
    log = work_dir / "serve-smoke.log"
    term = work_dir / "serve-termination-log"
    term.unlink(missing_ok=True)
    env = {**os.environ, "NEURAXIS_LAKE_URI": lake.root, TERMINATION_LOG_ENV: str(term)}
    command = [
        sys.executable, "-m", "neuraxis.cli", "workload", "serve", "--model", artifact_uri,
        "--name", model, "--host", "127.0.0.1", "--port", str(port),
        "--grpc-port", str(grpc_port), *(["--digest", digest] if digest else []),
    ]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        result = _exercise(base, grpc_port, model, proc, timeout, log)
        refusal = read_compact_result(term.read_text()) if term.exists() else None
        if not result.passed and refusal is not None:
            # The server said why it would not start (ArtifactChanged), as to a kubelet.
            reason = str(refusal.get("reason") or result.reason)
            return SmokeResult(False, str(refusal.get("message") or result.message), reason)
        return result
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _grpc_probabilities(port: int, model: str, row: list[float]) -> list[float]:
    """ModelInfer over gRPC (Open Inference Protocol), the first output's values."""
    import grpc

    from neuraxis.workloads.serve.oip import inference_pb2 as pb

    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="input", datatype="FP32", shape=[1, len(row)])
    request.inputs[0].contents.fp32_contents.extend(row)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        response = infer(request, timeout=30)
    count = len(response.raw_output_contents[0]) // 4
    return list(struct.unpack(f"<{count}f", response.raw_output_contents[0]))


def _exercise(
    base: str, grpc_port: int, model: str, proc: subprocess.Popen[bytes], timeout: float, log: Path
) -> SmokeResult:
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=base, timeout=10) as client:
        while True:
            if proc.poll() is not None:
                tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
                return SmokeResult(False, f"the server exited with {proc.returncode}: {tail}")
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                return SmokeResult(False, f"the server was not ready within {timeout:.0f}s")
            time.sleep(0.3)
        meta = client.get(f"/v2/models/{model}").json()
        n_features = int(meta["inputs"][0]["shape"][1])
        row = [0.0] * n_features
        started = time.perf_counter()
        response = client.post(f"/v1/models/{model}:predict", json={"instances": [row]})
        elapsed_ms = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            text = response.text[:200]
            return SmokeResult(False, f"predict answered {response.status_code}: {text}")
        over_rest = client.post(
            f"/v2/models/{model}/infer",
            json={"inputs": [{"name": "input", "shape": [1, n_features], "datatype": "FP32",
                              "data": row}]},
        ).json()["outputs"][0]["data"]  # fmt: skip
    import grpc

    try:
        over_grpc = _grpc_probabilities(grpc_port, model, row)
    except grpc.RpcError as exc:
        return SmokeResult(False, f"gRPC ModelInfer answered {exc.code()}: {exc.details()}")
    if len(over_grpc) != len(over_rest) or any(
        abs(a - b) > 1e-6 for a, b in zip(over_grpc, over_rest, strict=True)
    ):
        return SmokeResult(False, f"gRPC answered {over_grpc}, REST {over_rest}")
    return SmokeResult(True, f"smoke test: predict 200 in {elapsed_ms:.1f} ms; gRPC ModelInfer OK")
