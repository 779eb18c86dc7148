"""Benchmark of the inference server (`neuraxis workload serve`) against its limits.

In one run, all against real server processes on 127.0.0.1:
- the raw model forward in-process (the limit: no HTTP at all);
- a minimal hand-written baseline server: one bare Starlette route on the same uvicorn that
  parses JSON and calls the model (no validation, batching or metrics);
- the Neuraxis server, p50/p99 latency and requests/s at 1, 8 and 64 concurrent clients;
- dynamic batching on vs off at 64 clients, on a wide model where a forward costs real work;
- auth overhead: the auth middleware (API keys + a per-key rate limit) per request, in-process
  (the ASGI call with and without it, p50 of the difference) and end to end (the same server
  with `--auth-mode none` and `apiKeys`, p50 at one client).
- the edge agent (`neuraxis workload edge`) on the same wide model at 64 clients: a batch size
  that adapts to a forward-latency target (AIMD) against fixed batch sizes (req/s and p99).
- Open Inference Protocol v2 over REST (JSON) vs gRPC (raw FP32 tensors, as tritonclient and
  kserve send them) on the same server, same model and same batch, at 1 and 8 clients.

Targets: added p50 over the raw forward <= 1 ms at one client; batching >= 3x requests/s at 64;
auth middleware <= 0.1 ms p50 per request.
Load comes from a lean keep-alive HTTP/1.1 client (asyncio streams), bounded in requests and time.

    .venv/bin/python bench/serve.py [--quick] [--auth-only] [--edge-only] [--only-protocols]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
N_FEATURES = 7
SERVE = [sys.executable, "-m", "neuraxis.workloads.serve"]
EDGE = [sys.executable, "-m", "neuraxis.workloads.edge"]


# ---- models and artifacts -------------------------------------------------------------------
def build_model(hidden: int, layers: int) -> Any:
    import torch
    from torch import nn

    torch.manual_seed(0)
    mods: list[nn.Module] = [nn.Linear(N_FEATURES, hidden), nn.ReLU()]
    for _ in range(layers - 1):
        mods += [nn.Linear(hidden, hidden), nn.ReLU()]
    mods += [nn.Linear(hidden, 2), nn.Softmax(dim=1)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.script(nn.Sequential(*mods).eval())


def write_bench_artifact(root: Path, name: str, module: Any) -> Path:
    import torch

    from neuraxis.lake import Lake
    from neuraxis.workloads.artifact import FeatureSpec, Signature, write_artifact

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(module, buf)
    sig = Signature(
        features=[FeatureSpec(name=f"f{i}") for i in range(N_FEATURES)],
        task="classification",
        classes=["ok", "failure"],
        label="failure",
        architecture="mlp",
        model_version="bench",
    )
    folder = f"models/bench/{name}/v1"
    lake = Lake(str(root))
    write_artifact(
        lake, folder, {"model.ts": buf.getvalue(), "signature.json": sig.model_dump_json().encode()}
    )
    return root / folder


def write_edge_bundle(root: Path, module: Any) -> str:
    """The wide model as an edge bundle the agent fetches (same files: a verified artifact)."""
    folder = write_bench_artifact(root, "edge-src", module)
    target = root / "edge" / "bench" / "m" / "v1"
    target.parent.mkdir(parents=True)
    folder.rename(target)
    return f"file://{target}"


def raw_forward(module: Any, batch: int, seconds: float) -> list[float]:
    """Latencies of the model called directly (same thread settings as the servers)."""
    import torch

    x = torch.randn(batch, N_FEATURES)
    out: list[float] = []
    with torch.inference_mode():
        for _ in range(3):
            module(x)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            start = time.perf_counter()
            module(x)
            out.append(time.perf_counter() - start)
    return out


# ---- the baseline server ----------------------------------------------------------------------
def baseline_server(model_dir: str, port: int) -> None:
    """A bare Starlette route on uvicorn: parse JSON, call the model, answer. Nothing else."""
    import torch
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(Path(model_dir) / "model.ts"))  # type: ignore[no-untyped-call]

    async def predict(request: Request) -> JSONResponse:
        body = await request.json()
        with torch.inference_mode():
            out = module(torch.tensor(body["instances"], dtype=torch.float32))
        return JSONResponse({"predictions": out.tolist()})

    async def ready(request: Request) -> JSONResponse:
        return JSONResponse({"ready": True})

    app = Starlette(
        routes=[
            Route("/v1/models/{name}:predict", predict, methods=["POST"]),
            Route("/readyz", ready),
        ]
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# ---- processes --------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def start(cmd: list[str], port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{cmd} exited: {proc.stderr.read().decode() if proc.stderr else ''}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                if b" 200 " in sock.recv(1024):
                    return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{cmd} not ready")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def edge_cmd(bundle: str, cache: Path, port: int, extra: list[str]) -> list[str]:
    return [*EDGE, "--bundle", bundle, "--cache-dir", str(cache), "--port", str(port),
            "--name", "m", "--node", "bench", "--sync-interval-s", "3600",
            "--check-interval-s", "3600", "--max-in-flight", "1024", "--max-batch-wait-ms", "2",
            *extra]  # fmt: skip


def serve_cmd(model_dir: Path, port: int, max_batch: int, wait_ms: float) -> list[str]:
    return [*SERVE, "--model", str(model_dir), "--port", str(port), "--torch-threads", "1",
            "--max-batch-size", str(max_batch), "--max-batch-wait-ms", str(wait_ms)]  # fmt: skip


# ---- load -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoadResult:
    latencies: list[float]
    seconds: float

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.latencies) * 1000

    @property
    def p99_ms(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds


async def _client(port: int, request: bytes, count: int, deadline: float, out: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(count):
            if time.perf_counter() > deadline:
                break
            start = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))  # fmt: skip
            await reader.readexactly(length)
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head.decode())
            out.append(time.perf_counter() - start)
    finally:
        writer.close()


def run_load(
    port: int, concurrency: int, requests: int, max_seconds: float, headers: str = ""
) -> LoadResult:
    """`headers`: extra header lines, each ending in CRLF (credentials)."""
    body = json.dumps({"instances": [[0.5] * N_FEATURES]}).encode()
    request = (
        f"POST /v1/models/m:predict HTTP/1.1\r\nhost: 127.0.0.1\r\n{headers}"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode() + body

    async def main() -> LoadResult:
        await _client(port, request, 20, time.perf_counter() + 10, [])  # warm-up
        out: list[float] = []
        per_client = max(1, requests // concurrency)
        start = time.perf_counter()
        deadline = start + max_seconds
        await asyncio.gather(
            *(_client(port, request, per_client, deadline, out) for _ in range(concurrency))
        )
        return LoadResult(out, time.perf_counter() - start)

    return asyncio.run(main())


# ---- auth overhead ----------------------------------------------------------------------------
AUTH_GOAL_MS = 0.1
ROUNDS = 5
BENCH_KEY = "bench-key-0123456789abcdef"


def middleware_p50_ms(keys_dir: Path, calls: int) -> tuple[float, float]:
    """p50 of one ASGI call through AuthMiddleware (API keys, 16 keys, a rate limit no request
    reaches) and of the same call without it, around an app that answers at once."""
    from neuraxis.workloads.serve.auth import AuthConfig, AuthMiddleware, build_gate

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def send(message: Any) -> None:
        return None

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    gate = build_gate(AuthConfig("apiKeys", keys_dir, rate_limit_rps=1e9, rate_limit_burst=10**9))
    guarded = AuthMiddleware(app, gate)
    headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
               (b"authorization", f"Bearer {BENCH_KEY}".encode())]  # fmt: skip

    async def timed(target: Any) -> list[float]:
        out = []
        for _ in range(calls):
            scope = {"type": "http", "path": "/v1/models/m:predict", "headers": headers}
            start = time.perf_counter()
            await target(scope, receive, send)
            out.append(time.perf_counter() - start)
        return out

    async def both() -> tuple[list[float], list[float]]:
        await timed(guarded)  # warm-up
        return await timed(guarded), await timed(app)

    with_auth, without = asyncio.run(both())
    return statistics.median(with_auth) * 1000, statistics.median(without) * 1000


def write_keys(root: Path) -> Path:
    folder = root / "api-keys"
    folder.mkdir()
    for i in range(15):
        (folder / f"other-{i}").write_text(f"other-key-{i:04d}-{'x' * 16}")
    (folder / "bench").write_text(BENCH_KEY)
    return folder


def auth_overhead(model_dir: Path, tmp: Path, requests: int, max_s: float) -> None:
    keys_dir = write_keys(tmp)
    calls = 20000 if requests >= 2000 else 5000
    with_ms, without_ms = middleware_p50_ms(keys_dir, calls)
    added = with_ms - without_ms
    print("\nauth overhead (API keys: 16 keys, sha256 + compare_digest each, per-key rate limit)")
    print(f"  middleware in-process, {calls} calls: p50 {with_ms * 1000:.1f} us with auth, "
          f"{without_ms * 1000:.1f} us without: {added:.4f} ms per request; "
          f"goal <= {AUTH_GOAL_MS} ms: {added / AUTH_GOAL_MS:.2f}x the goal")  # fmt: skip
    credential = f"authorization: Bearer {BENCH_KEY}\r\n"
    modes = (
        ("none", ["--auth-mode", "none"], ""),
        ("apiKeys", ["--auth-mode", "apiKeys", "--api-keys-dir", str(keys_dir),
                     "--rate-limit-rps", "1000000", "--rate-limit-burst", "1000000"], credential),
    )  # fmt: skip
    ports = {mode: free_port() for mode, _, _ in modes}
    procs = [
        start([*serve_cmd(model_dir, ports[m], 32, 2), *extra], ports[m]) for m, extra, _ in modes
    ]
    latencies: dict[str, list[float]] = {mode: [] for mode, _, _ in modes}
    try:
        # Both servers up, rounds interleaved: drift of a shared machine hits both alike.
        for _ in range(ROUNDS):
            for mode, _, headers in modes:
                r = run_load(ports[mode], 1, requests // ROUNDS, max_s / ROUNDS, headers)
                latencies[mode] += r.latencies
    finally:
        for proc in procs:
            stop(proc)
    e2e = {mode: LoadResult(values, 1.0) for mode, values in latencies.items()}
    diff = e2e["apiKeys"].p50_ms - e2e["none"].p50_ms
    print(f"  end to end, 1 client: p50 {e2e['none'].p50_ms:.3f} ms auth none, "
          f"{e2e['apiKeys'].p50_ms:.3f} ms apiKeys: {diff:+.3f} ms "
          f"({diff / AUTH_GOAL_MS:+.2f}x the goal; HTTP noise included)")  # fmt: skip


# ---- REST vs gRPC ------------------------------------------------------------------------------
def v2_rest_request(rows: int) -> bytes:
    data = [[0.5] * N_FEATURES] * rows
    body = json.dumps(
        {
            "inputs": [
                {"name": "input", "shape": [rows, N_FEATURES], "datatype": "FP32", "data": data}
            ]
        }
    ).encode()
    return (
        f"POST /v2/models/m/infer HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode() + body


def run_rest_v2(port: int, rows: int, concurrency: int, requests: int, max_s: float) -> LoadResult:
    request = v2_rest_request(rows)

    async def main() -> LoadResult:
        await _client(port, request, 20, time.perf_counter() + 10, [])  # warm-up
        out: list[float] = []
        start = time.perf_counter()
        per_client, deadline = max(1, requests // concurrency), start + max_s
        await asyncio.gather(
            *(_client(port, request, per_client, deadline, out) for _ in range(concurrency))
        )
        return LoadResult(out, time.perf_counter() - start)

    return asyncio.run(main())


def run_grpc(port: int, rows: int, concurrency: int, requests: int, max_s: float) -> LoadResult:
    """ModelInfer over one HTTP/2 channel, FP32 data as raw little-endian bytes."""
    import grpc
    import numpy as np

    from neuraxis.workloads.serve.oip import inference_pb2 as pb

    message = pb.ModelInferRequest(model_name="m")
    message.inputs.add(name="input", datatype="FP32", shape=[rows, N_FEATURES])
    message.raw_input_contents.append(np.full((rows, N_FEATURES), 0.5, dtype="<f4").tobytes())
    payload = message.SerializeToString()

    async def main() -> LoadResult:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")

            async def client(count: int, deadline: float, out: list[float]) -> None:
                for _ in range(count):
                    if time.perf_counter() > deadline:
                        break
                    begin = time.perf_counter()
                    await call(payload)
                    out.append(time.perf_counter() - begin)

            await client(20, time.perf_counter() + 10, [])  # warm-up
            out: list[float] = []
            start = time.perf_counter()
            per_client, deadline = max(1, requests // concurrency), start + max_s
            await asyncio.gather(*(client(per_client, deadline, out) for _ in range(concurrency)))
            return LoadResult(out, time.perf_counter() - start)

    return asyncio.run(main())


def protocols_section(small_dir: Path, requests: int, max_s: float) -> None:
    print("\nOpen Inference Protocol v2: REST (JSON) vs gRPC (raw FP32), same server and batch")
    port, grpc_port = free_port(), free_port()
    proc = start([*serve_cmd(small_dir, port, 32, 2), "--grpc-port", str(grpc_port)], port)
    print(f"  {'rows/request':>12} {'clients':>7} {'protocol':>8} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'req/s':>8}")  # fmt: skip
    try:
        for rows in (1, 32):
            for clients in (1, 8):
                rest = run_rest_v2(port, rows, clients, requests, max_s)
                over_grpc = run_grpc(grpc_port, rows, clients, requests, max_s)
                for name, r in (("REST", rest), ("gRPC", over_grpc)):
                    print(f"  {rows:>12} {clients:>7} {name:>8} {r.p50_ms:>8.3f} {r.p99_ms:>8.3f} "
                          f"{r.rps:>8.0f}")  # fmt: skip
                print(f"  {'':>12} {'':>7} gRPC/REST: p50 {over_grpc.p50_ms / rest.p50_ms:.2f}x, "
                      f"throughput {over_grpc.rps / rest.rps:.2f}x")  # fmt: skip
    finally:
        stop(proc)


# ---- the run ----------------------------------------------------------------------------------
def edge_batch_limit(port: int) -> float:
    """neuraxis_edge_batch_size_limit from the agent's /metrics (where AIMD settled)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    line = next(x for x in text.splitlines() if x.startswith("neuraxis_edge_batch_size_limit "))
    return float(line.split()[1])


def edge_section(tmp: Path, wide: Any, requests: int, max_s: float) -> None:
    """Edge agent throughput: adaptive batch size (AIMD toward a forward-latency target) vs
    fixed sizes, 64 clients on the wide model."""
    bundle = write_edge_bundle(tmp, wide)
    raw64 = statistics.median(raw_forward(wide, 64, 2.0))
    target_ms = max(1, round(raw64 * 1000 / 2))  # half a batch-64 forward: a real trade-off
    print(f"\nedge agent: wide model, 64 clients; batch-64 forward {raw64 * 1000:.1f} ms, "
          f"adaptive latency target {target_ms} ms")  # fmt: skip
    cases = (
        ("fixed batch 64", ["--max-batch-size", "64"]),
        ("fixed batch 8", ["--max-batch-size", "8"]),
        (f"adaptive 1..64, {target_ms} ms", ["--max-batch-size", "64", "--min-batch-size", "1",
                                            "--latency-target-ms", str(target_ms)]),
    )  # fmt: skip
    out: dict[str, LoadResult] = {}
    for i, (label, extra) in enumerate(cases):
        port = free_port()
        proc = start(edge_cmd(bundle, tmp / f"edge-cache-{i}", port, extra), port)
        try:
            out[label] = r = run_load(port, 64, requests, max_s)
            limit = edge_batch_limit(port)
        finally:
            stop(proc)
        print(f"  {label:<28} p50 {r.p50_ms:8.2f} ms  p99 {r.p99_ms:8.2f} ms  {r.rps:7.0f} req/s"
              f"  batch limit at the end {limit:.0f}")  # fmt: skip
    adaptive = out[cases[2][0]]
    for label, _ in cases[:2]:
        fixed = out[label]
        print(f"  adaptive / {label}: {adaptive.rps / fixed.rps:.2f}x req/s, "
              f"p99 {adaptive.p99_ms / fixed.p99_ms:.2f}x")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests per level")
    parser.add_argument("--auth-only", action="store_true", help="only the auth overhead")
    parser.add_argument("--edge-only", action="store_true", help="only the edge agent section")
    parser.add_argument(
        "--only-protocols", action="store_true", help="only the REST vs gRPC section"
    )
    parser.add_argument("--baseline-server", metavar="MODEL_DIR", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_server:
        baseline_server(args.baseline_server, args.port)
        return

    import torch

    torch.set_num_threads(1)
    requests = 400 if args.quick else 2000
    max_s = 8.0 if args.quick else 20.0
    levels = (1, 8, 64)
    with tempfile.TemporaryDirectory(prefix="neuraxis-bench-") as tmp:
        small = build_model(hidden=64, layers=2)
        wide = build_model(hidden=2048, layers=3)
        if args.edge_only:
            edge_section(Path(tmp), wide, requests, max_s)
            return
        small_dir = write_bench_artifact(Path(tmp), "m", small)
        if args.auth_only:
            auth_overhead(small_dir, Path(tmp), requests, max_s)
            return
        wide_dir = write_bench_artifact(Path(tmp), "m-wide", wide)
        if args.only_protocols:
            protocols_section(small_dir, requests, max_s)
            return
        # Served under the name "m" in URLs: the wide artifact is renamed via --name.

        raw = raw_forward(small, 1, 2.0 if args.quick else 5.0)
        raw_p50 = statistics.median(raw) * 1000
        print(f"small model: MLP {N_FEATURES}-64-64-2, 1 torch thread; {requests} requests/level")
        print(f"  raw forward (batch 1, in-process)  p50 {raw_p50:.3f} ms  "
              f"p99 {sorted(raw)[int(0.99 * len(raw))] * 1000:.3f} ms")  # fmt: skip

        results: dict[tuple[str, int], LoadResult] = {}
        port = free_port()
        base = start(
            [sys.executable, __file__, "--baseline-server", str(small_dir), "--port", str(port)],
            port,
        )
        try:
            for c in levels:
                results[("baseline", c)] = run_load(port, c, requests, max_s)
        finally:
            stop(base)
        port = free_port()
        ours = start(serve_cmd(small_dir, port, 32, 2), port)
        try:
            for c in levels:
                results[("neuraxis", c)] = run_load(port, c, requests, max_s)
        finally:
            stop(ours)
        print(f"  {'server':<34} {'clients':>7} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}")
        for (server, c), r in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            label = (
                "bare Starlette route (baseline)"
                if server == "baseline"
                else "neuraxis serve (batch 32, 2 ms)"
            )
            print(f"  {label:<34} {c:>7} {r.p50_ms:>8.3f} {r.p99_ms:>8.3f} {r.rps:>8.0f}")
        ours1, base1 = results[("neuraxis", 1)], results[("baseline", 1)]
        print(f"  added p50 over raw forward at 1 client: neuraxis {ours1.p50_ms - raw_p50:.3f} ms "
              f"(target <= 1 ms), baseline {base1.p50_ms - raw_p50:.3f} ms")  # fmt: skip
        for c in levels:
            ratio = results[("neuraxis", c)].rps / results[("baseline", c)].rps
            print(f"  throughput neuraxis / baseline at {c} clients: {ratio:.2f}x")

        print("\nwide model: MLP 7-2048-2048-2048-2 (8.4M parameters), 1 torch thread")
        raw1 = statistics.median(raw_forward(wide, 1, 2.0))
        raw64 = statistics.median(raw_forward(wide, 64, 3.0))
        print(f"  raw forward: batch 1 {raw1 * 1000:.2f} ms ({1 / raw1:.0f} rows/s), "
              f"batch 64 {raw64 * 1000:.2f} ms ({64 / raw64:.0f} rows/s): the limits")  # fmt: skip
        wide_results = {}
        for label, max_batch in (
            ("batching off (max batch 1)", 1),
            ("batching on (max batch 64)", 64),
        ):
            port = free_port()
            proc = start([*serve_cmd(wide_dir, port, max_batch, 2), "--name", "m"], port)
            try:
                r = run_load(port, 64, requests, max_s)
            finally:
                stop(proc)
            wide_results[max_batch] = r
            print(f"  {label:<28} 64 clients  p50 {r.p50_ms:8.2f} ms  p99 {r.p99_ms:8.2f} ms  "
                  f"{r.rps:7.0f} req/s")  # fmt: skip
        gain = wide_results[64].rps / wide_results[1].rps
        print(f"  dynamic batching gain at 64 clients: {gain:.2f}x (target >= 3x); "
              f"on / raw batch-64 limit: {wide_results[64].rps / (64 / raw64):.2f}")  # fmt: skip
        auth_overhead(small_dir, Path(tmp), requests, max_s)
        edge_section(Path(tmp), wide, requests, max_s)
        protocols_section(small_dir, requests, max_s)


if __name__ == "__main__":
    main()
