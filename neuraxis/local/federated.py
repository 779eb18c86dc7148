"""`neuraxis run` for a federated TrainingJob: the operator's three pods as processes on loopback.

The SuperLink, one SuperNode per site and the server run the same commands and see the same
environment as in a cluster (`neuraxis workload federated <role>`, see
workloads/federation_contract.py). This module plays the operator's part: it makes the TLS
material (operator/tls.py, the one generator), writes the spec, and starts and stops the
processes. Nothing here is simulated."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from neuraxis.crds.trainingjob import FederationSite, TrainingJob
from neuraxis.lake import EDGE_SITE_ENV, Lake
from neuraxis.operator.tls import LOOPBACK_NAMES, generate_server_tls
from neuraxis.workloads.federation_contract import (
    CA_CERT_FILE,
    CONTROL_ADDRESS_ENV,
    SERVER_CERT_FILE,
    SERVER_KEY_FILE,
    SITE_ENV,
    SUPERLINK_ADDRESS_ENV,
    TLS_DIR_ENV,
    WORKLOAD_COMMAND,
    Role,
)
from neuraxis.workloads.result import TERMINATION_LOG_ENV

LOOPBACK = "127.0.0.1"
# How long the whole run may take before it is stopped (small local runs take a few minutes).
RUN_TIMEOUT_SECONDS = 1800.0


@dataclass
class Federation:
    """The running processes of one local federated run."""

    folder: Path
    link_port: int
    env: dict[str, str] = field(default_factory=dict)
    link: subprocess.Popen[bytes] | None = None
    nodes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    server: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.link_port}"

    @property
    def termination_log(self) -> Path:
        """The server's termination message (a pod's /dev/termination-log)."""
        return self.folder / "server.termination-log"

    def stop_site(self, site: str) -> None:
        """Kill a site's SuperNode (and the processes it started), as a site that goes dark."""
        _kill(self.nodes[site])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 300.0) -> None:
    """Block until the SuperLink accepts connections (its imports take a while on a busy box)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the SuperLink exited with {proc.returncode} before listening")
        with socket.socket() as s:
            if s.connect_ex((LOOPBACK, port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"the SuperLink did not listen on {LOOPBACK}:{port} in {timeout:.0f}s")


def _kill(proc: subprocess.Popen[bytes]) -> None:
    # Each process leads its own group: the SuperExec and app processes it spawned go too.
    if proc.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def role_command(role: Role, *args: str) -> list[str]:
    """The pods' command, with this interpreter for `python`."""
    return [sys.executable, *WORKLOAD_COMMAND[1:], role, *args]


def _base_env(folder: Path, lake: Lake) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["NEURAXIS_LAKE_URI"] = lake.root
    env[TLS_DIR_ENV] = str(folder / "certs")
    # Not a pod: no termination message unless a role is given one.
    env.pop(TERMINATION_LOG_ENV, None)
    env.pop("KUBERNETES_SERVICE_HOST", None)
    return env


def _role_env(running: Federation, role: str, extra: dict[str, str]) -> dict[str, str]:
    # Each process its own Flower home, as each pod has its own filesystem.
    return {**running.env, "FLWR_HOME": str(running.folder / f"home-{role}"), **extra}


def _spawn(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)  # fmt: skip


def write_tls(folder: Path) -> Path:
    """The run's CA and the SuperLink's certificate for loopback, as the TLS Secret's files."""
    tls = generate_server_tls("neuraxis federation (neuraxis run)", LOOPBACK_NAMES)
    certs = folder / "certs"
    certs.mkdir(parents=True, exist_ok=True)
    for name, data in ((CA_CERT_FILE, tls.ca_cert), (SERVER_CERT_FILE, tls.server_cert),
                       (SERVER_KEY_FILE, tls.server_key)):  # fmt: skip
        (certs / name).write_bytes(data)
    (certs / SERVER_KEY_FILE).chmod(0o600)
    return certs


@contextmanager
def federation(job: TrainingJob, lake: Lake, folder: Path) -> Iterator[Federation]:
    """Start the SuperLink and every site's SuperNode; stop them all on exit."""
    fed = job.spec.federation
    if fed is None:
        raise ValueError("spec.federation: required for a federated run")
    folder.mkdir(parents=True, exist_ok=True)
    write_tls(folder)
    running = Federation(folder=folder, link_port=_free_port(), env=_base_env(folder, lake))
    try:
        running.link = _spawn(
            role_command("superlink", "--host", LOOPBACK, "--port", str(running.link_port)),
            folder / "superlink.log",
            _role_env(running, "superlink", {}),
        )
        wait_for_port(running.link_port, running.link)
        for site in fed.sites:
            running.nodes[site.name] = start_supernode(running, site)
        yield running
    finally:
        others = [running.server, running.link]
        for proc in [*running.nodes.values(), *[p for p in others if p is not None]]:
            _kill(proc)


def start_supernode(running: Federation, site: FederationSite) -> subprocess.Popen[bytes]:
    """A site's SuperNode with the environment its pod gets (operator/builders/federation.py)."""
    ref = site.dataset_ref
    env = {
        SUPERLINK_ADDRESS_ENV: running.address,
        SITE_ENV: site.name,
        EDGE_SITE_ENV: site.name,
        "NEURAXIS_DATASET": ref.name,
        **({"NEURAXIS_DATASET_VERSION": str(ref.version)} if ref.version is not None else {}),
    }
    return _spawn(
        role_command("supernode", "--appio-port", str(_free_port())),
        running.folder / f"supernode-{site.name}.log",
        _role_env(running, f"supernode-{site.name}", env),
    )


def submit(running: Federation, job: TrainingJob, namespace: str, run_id: str,
           record_dir: str = "") -> None:  # fmt: skip
    """Start the server: it submits the run, waits for its result and reports it."""
    spec = running.folder / "trainingjob.yaml"
    spec.write_text(yaml.safe_dump(job.to_wire(), sort_keys=True))
    args = ["--spec", str(spec), "--namespace", namespace, "--run-id", run_id]
    if record_dir:
        args += ["--record-dir", record_dir]
    env = {CONTROL_ADDRESS_ENV: running.address, TERMINATION_LOG_ENV: str(running.termination_log)}
    running.server = _spawn(
        role_command("server", *args),
        running.folder / "server.log",
        _role_env(running, "server", env),
    )


def wait_for_result(lake: Lake, namespace: str, run_id: str, running: Federation,
                    timeout: float = RUN_TIMEOUT_SECONDS) -> dict[str, Any]:  # fmt: skip
    """The run's result.json, once the server has reported it."""
    server = running.server
    if server is None:
        raise RuntimeError("the run was not submitted")
    deadline = time.monotonic() + timeout
    while server.poll() is None:
        if running.link is not None and running.link.poll() is not None:
            raise RuntimeError(f"the SuperLink exited; see {running.folder / 'superlink.log'}")
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"federated run {namespace}/{run_id}: no result after {timeout:.0f}s"
            )
        time.sleep(1.0)
    rel = f"{lake.run_path(namespace, run_id)}/result.json"
    if not lake.exists(rel):
        raise RuntimeError(
            f"the server exited with {server.returncode} and no result; see "
            f"{running.folder / 'server.log'}"
        )
    result: dict[str, Any] = lake.read_json(rel)
    return result


def run_federated(job: TrainingJob, lake: Lake, namespace: str, run_id: str, folder: Path,
                  record_dir: str = "") -> dict[str, Any]:  # fmt: skip
    """Start everything, submit the run, wait for its result, stop everything."""
    with federation(job, lake, folder) as running:
        submit(running, job, namespace, run_id, record_dir)
        return wait_for_result(lake, namespace, run_id, running)
