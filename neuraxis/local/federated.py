"""`neuraxis run` for a federated TrainingJob: Flower's deployment engine on loopback.

One SuperLink (TLS with a per-run CA), one SuperNode process per site whose node config names
only that site's Dataset version, and the run submitted with `flwr run` (Flower's Control API).
These are the processes the operator runs as pods; nothing here is simulated."""

from __future__ import annotations

import os
import shutil
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

from neuraxis.crds.trainingjob import FederationSite, TrainingJob
from neuraxis.lake import Lake
from neuraxis.workloads.federated import config as keys
from neuraxis.workloads.federated.tls import generate_tls

APP_DIR = Path(__file__).resolve().parents[1] / "workloads" / "federated" / "app"
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


def _env(folder: Path, lake: Lake) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["FLWR_HOME"] = str(folder / "flwr-home")
    env["NEURAXIS_LAKE_URI"] = lake.root
    return env


def _spawn(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)  # fmt: skip


@contextmanager
def federation(job: TrainingJob, lake: Lake, folder: Path) -> Iterator[Federation]:
    """Start the SuperLink and every site's SuperNode; stop them all on exit."""
    fed = job.spec.federation
    if fed is None:
        raise ValueError("spec.federation: required for a federated run")
    folder.mkdir(parents=True, exist_ok=True)
    tls = generate_tls([LOOPBACK, "localhost"])
    certs = folder / "certs"
    certs.mkdir(exist_ok=True)
    for name, data in (("ca.crt", tls.ca_cert), ("server.pem", tls.server_cert),
                       ("server.key", tls.server_key)):  # fmt: skip
        (certs / name).write_bytes(data)
    (certs / "server.key").chmod(0o600)
    env = _env(folder, lake)
    running = Federation(folder=folder, link_port=_free_port(), env=env)
    try:
        running.link = _spawn(
            ["flower-superlink", "--ssl-ca-certfile", str(certs / "ca.crt"),
             "--ssl-certfile", str(certs / "server.pem"),
             "--ssl-keyfile", str(certs / "server.key"),
             "--disable-runtime-dependency-installation",
             "--host", LOOPBACK, "--port", str(running.link_port)],
            folder / "superlink.log", env,
        )  # fmt: skip
        wait_for_port(running.link_port, running.link)
        for site in fed.sites:
            running.nodes[site.name] = start_supernode(running, site, env)
        yield running
    finally:
        for proc in [*running.nodes.values(), *([running.link] if running.link else [])]:
            _kill(proc)


def start_supernode(running: Federation, site: FederationSite, env: dict[str, str]) -> Any:
    return _spawn(
        ["flower-supernode", "--superlink", f"{LOOPBACK}:{running.link_port}",
         "--root-certificates", str(running.folder / "certs" / "ca.crt"),
         "--host", LOOPBACK, "--port", str(_free_port()),
         "--node-config", keys.node_config(site)],
        running.folder / f"supernode-{site.name}.log", env,
    )  # fmt: skip


def submit(running: Federation, job: TrainingJob, namespace: str, run_id: str,
           record_dir: str = "") -> None:  # fmt: skip
    """`flwr run` the app against the SuperLink, trusting the run's CA."""
    home = running.folder / "flwr-home"
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "neuraxis"\n\n[superlink.neuraxis]\n'
        f'address = "{LOOPBACK}:{running.link_port}"\n'
        f'root-certificates = "{running.folder / "certs" / "ca.crt"}"\n'
    )
    app = running.folder / "app"
    shutil.copytree(APP_DIR, app, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    args = ["flwr", "run", str(app), "neuraxis"]
    for value in keys.run_config(job, namespace, run_id, record_dir):
        args += ["--run-config", value]
    done = subprocess.run(args, env=running.env, capture_output=True, timeout=600, check=False)
    if done.returncode != 0:
        output = (done.stdout + done.stderr).decode(errors="replace")[-2000:]
        raise RuntimeError(f"flwr run failed ({done.returncode}): {output}")


def wait_for_result(lake: Lake, namespace: str, run_id: str, running: Federation,
                    timeout: float = RUN_TIMEOUT_SECONDS) -> dict[str, Any]:  # fmt: skip
    """The run's result.json, once the ServerApp has published it."""
    rel = f"{lake.run_path(namespace, run_id)}/result.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lake.exists(rel):
            result: dict[str, Any] = lake.read_json(rel)
            return result
        if running.link is not None and running.link.poll() is not None:
            raise RuntimeError(f"the SuperLink exited; see {running.folder / 'superlink.log'}")
        time.sleep(1.0)
    raise TimeoutError(f"federated run {namespace}/{run_id}: no result after {timeout:.0f}s")


def run_federated(job: TrainingJob, lake: Lake, namespace: str, run_id: str, folder: Path,
                  record_dir: str = "") -> dict[str, Any]:  # fmt: skip
    """Start everything, submit the run, wait for its result, stop everything."""
    with federation(job, lake, folder) as running:
        submit(running, job, namespace, run_id, record_dir)
        return wait_for_result(lake, namespace, run_id, running)
