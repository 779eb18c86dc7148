"""The serving smoke test of `neuraxis run`: start the same server the predictor Deployment
runs (HTTP and gRPC), ask its metadata, send one prediction over each protocol, and stop it
gracefully."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from neuraxis.crds.common import ServingAuth, secret_env_prefix
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


@dataclass(frozen=True)
class SmokeAuth:
    """The server flags for spec.serving.auth here, and the headers the smoke client sends."""

    args: list[str]
    headers: dict[str, str]
    note: str = ""


def api_keys_from_env(secret: str, env: Mapping[str, str]) -> dict[str, str]:
    """The Secret's keys as `neuraxis run` finds them: NEURAXIS_SECRET_<NAME>_<ID>=<key>, the
    id in lower case (as the key's name in the Secret would be)."""
    prefix = secret_env_prefix(secret)
    return {
        name.removeprefix(prefix).lower(): value
        for name, value in sorted(env.items())
        if name.startswith(prefix) and len(name) > len(prefix) and value
    }


def smoke_auth(auth: ServingAuth | None, keys_dir: Path, env: Mapping[str, str]) -> SmokeAuth:
    """API keys come from the environment, written for the server as a Secret volume would
    show them; ServiceAccount tokens need an API server, so that server runs open here."""
    if auth is None or auth.mode == "none":
        return SmokeAuth(["--auth-mode", "none"], {})
    if auth.mode == "serviceAccountToken":
        note = "; serviceAccountToken is checked in a cluster only (served open here)"
        return SmokeAuth(["--auth-mode", "none"], {}, note)
    assert auth.secret_ref is not None
    keys = api_keys_from_env(auth.secret_ref.name, env)
    if keys_dir.exists():
        shutil.rmtree(keys_dir)
    keys_dir.mkdir(parents=True, mode=0o700)
    for key_id, secret in keys.items():
        path = keys_dir / key_id
        path.touch(mode=0o600)
        path.write_text(secret)
    args = ["--auth-mode", "apiKeys", "--api-keys-dir", str(keys_dir)]
    headers = {"Authorization": f"Bearer {next(iter(keys.values()))}"} if keys else {}
    note = f"; API key {next(iter(keys))} accepted, none refused 401" if keys else ""
    return SmokeAuth(args, headers, note)


def smoke_test(
    artifact_uri: str,
    model: str,
    lake: Lake,
    work_dir: Path,
    timeout: float = 120.0,
    digest: str | None = None,
    auth: ServingAuth | None = None,
) -> SmokeResult:
    """`digest`: the pinned artifact digest, passed to the server as the predictor gets it;
    `auth`: spec.serving.auth (API keys from NEURAXIS_SECRET_<NAME>_<ID>)."""
    access = smoke_auth(auth, work_dir / "api-keys", os.environ)
    if auth is not None and auth.mode == "apiKeys" and not access.headers:
        assert auth.secret_ref is not None
        prefix = secret_env_prefix(auth.secret_ref.name)
        return SmokeResult(
            False,
            f"spec.serving.auth.secretRef: no API keys for Secret {auth.secret_ref.name!r} "
            f"(set {prefix}<ID>=<key>, one variable per key)",
            "ApiKeysMissing",
        )
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
        *access.args,
    ]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        result = _exercise(base, grpc_port, model, proc, timeout, log, access)
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


def _grpc_probabilities(
    port: int, model: str, row: list[float], headers: dict[str, str]
) -> list[float]:
    """ModelInfer over gRPC (Open Inference Protocol), the first output's values; `headers`
    (the API key, if any) travel as call metadata."""
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
        metadata = [(k.lower(), v) for k, v in headers.items()]
        response = infer(request, timeout=30, metadata=metadata)
    count = len(response.raw_output_contents[0]) // 4
    return list(struct.unpack(f"<{count}f", response.raw_output_contents[0]))


def _exercise(
    base: str,
    grpc_port: int,
    model: str,
    proc: subprocess.Popen[bytes],
    timeout: float,
    log: Path,
    access: SmokeAuth,
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
        meta = client.get(f"/v2/models/{model}", headers=access.headers).json()
        n_features = int(meta["inputs"][0]["shape"][1])
        row = [0.0] * n_features
        body = {"instances": [row]}
        predict = f"/v1/models/{model}:predict"
        if access.headers:  # the keys are in force: a request without one is refused
            refused = client.post(predict, json=body)
            if refused.status_code != 401:
                return SmokeResult(False, f"predict without a key answered {refused.status_code}")
        started = time.perf_counter()
        response = client.post(predict, json=body, headers=access.headers)
        elapsed_ms = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            text = response.text[:200]
            return SmokeResult(False, f"predict answered {response.status_code}: {text}")
        over_rest = client.post(
            f"/v2/models/{model}/infer",
            json={"inputs": [{"name": "input", "shape": [1, n_features], "datatype": "FP32",
                              "data": row}]},
            headers=access.headers,
        ).json()["outputs"][0]["data"]  # fmt: skip
    import grpc

    try:
        over_grpc = _grpc_probabilities(grpc_port, model, row, access.headers)
    except grpc.RpcError as exc:
        return SmokeResult(False, f"gRPC ModelInfer answered {exc.code()}: {exc.details()}")
    if len(over_grpc) != len(over_rest) or any(
        abs(a - b) > 1e-6 for a, b in zip(over_grpc, over_rest, strict=True)
    ):
        return SmokeResult(False, f"gRPC answered {over_grpc}, REST {over_rest}")
    note = f"smoke test: predict 200 in {elapsed_ms:.1f} ms; gRPC ModelInfer OK{access.note}"
    return SmokeResult(True, note)
