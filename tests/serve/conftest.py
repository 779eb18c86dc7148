"""Fixtures for the serving and edge tests: real TorchScript artifacts written with
`write_artifact` into a temporary lake, and real server processes started from the CLI modules."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from torch import nn

from neuraxis.lake import Lake
from neuraxis.workloads.artifact import ArtifactRef, FeatureSpec, Signature, write_artifact

REPO = Path(__file__).resolve().parents[2]
FEATURES = ["temperature", "vibration", "pressure"]
CLASSES = ["ok", "failure"]
STARTUP_TIMEOUT_S = 90.0


class TinyClassifier(nn.Module):
    """Normalisation buffers + Linear + softmax: raw features in, probabilities out."""

    def __init__(self, seed: int, n_classes: int = len(CLASSES)):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.linear = nn.Linear(len(FEATURES), n_classes)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(n_classes, len(FEATURES), generator=gen))
            self.linear.bias.copy_(torch.randn(n_classes, generator=gen))
        # Frozen parameters rather than buffers: same state_dict, and typed for mypy.
        self.mean = nn.Parameter(torch.tensor([70.0, 0.5, 1.0]), requires_grad=False)
        self.std = nn.Parameter(torch.tensor([10.0, 0.2, 0.1]), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.linear((x - self.mean) / self.std), dim=1)


def script_bytes(module: nn.Module, quantize: bool = False) -> bytes:
    module = module.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():  # TorchScript and int8 are the bundle contract; torch nags
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        if quantize:  # what an edge bundle holds: int8 dynamic quantization of the Linears
            quantize_dynamic = torch.ao.quantization.quantize_dynamic
            module = quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8)  # type: ignore[no-untyped-call]
        torch.jit.save(torch.jit.script(module), buf)
    return buf.getvalue()


def signature_bytes(version: str, classes: list[str] = CLASSES) -> bytes:
    sig = Signature(
        features=[FeatureSpec(name=n) for n in FEATURES],
        task="classification",
        classes=classes,
        label="failure",
        architecture="linear",
        model_version=version,
    )
    return sig.model_dump_json().encode()


def write_model(
    lake: Lake, folder: str, module: nn.Module, version: str, quantize: bool = False
) -> ArtifactRef:
    files = {"model.ts": script_bytes(module, quantize), "signature.json": signature_bytes(version)}
    if not quantize:
        buf = io.BytesIO()
        torch.save(module.state_dict(), buf)
        files["model.pt"] = buf.getvalue()
    return write_artifact(lake, folder, files)


def load_scripted(data: bytes) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(io.BytesIO(data))  # type: ignore[no-untyped-call]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass
class ServerProcess:
    """A `python -m <module>` server on 127.0.0.1:<port>, its output in `log`."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.url, timeout=30.0)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.output()}")
            try:
                if self.client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server not ready in {STARTUP_TIMEOUT_S}s:\n{self.output()}")

    def metrics(self) -> str:
        return self.client.get("/metrics").text

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.client.close()
        return self.proc.returncode


StartServer = Callable[..., ServerProcess]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """Start `python -m <module> <args> --port <free port>`; `ready=False` returns at once."""
    started: list[ServerProcess] = []

    def start(
        module: str, *args: str, env: dict[str, str] | None = None, ready: bool = True
    ) -> ServerProcess:
        port = free_port()
        log = tmp_path / f"server-{len(started)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", module, *args, "--port", str(port)],
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
            )
        server = ServerProcess(proc, port, log)
        started.append(server)
        if ready:
            server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop(signal.SIGKILL)


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in a Prometheus exposition, or None."""
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, rest = head.partition("{")
        if metric != name:
            continue
        found = dict(part.split("=", 1) for part in rest.rstrip("}").split(",") if "=" in part)
        if all(found.get(k, "").strip('"') == v for k, v in labels.items()):
            return float(value)
    return None
