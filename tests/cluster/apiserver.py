"""Stopping and starting the local cluster's kube-apiserver (binary runtime: plain processes),
for the chaos test. The controller manager and the scheduler give up their leader election and
exit when the API server is away for longer than their renew deadline (10 s), as they do in
any cluster, where a kubelet or systemd starts them again; here `ControlPlane.revive` does.
A process comes back with the same command line, environment and working directory, and the
pid file kwokctl keeps is updated, so `cluster down` still finds it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from neuraxis.dev import cluster as dev_cluster
from tests.cluster.conftest import Cluster

COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok-controller")


@dataclass
class Component:
    name: str
    pid_file: Path
    log_file: Path
    argv: list[str]
    env: dict[str, str]
    cwd: str

    @classmethod
    def of(cls, cluster_dir: Path, name: str) -> Component:
        pid_file = cluster_dir / "pids" / f"{name}.pid"
        pid = int(pid_file.read_text().strip())
        proc = Path(f"/proc/{pid}")
        argv = [a.decode() for a in (proc / "cmdline").read_bytes().split(b"\0") if a]
        if not argv or not argv[0].endswith(name):
            raise RuntimeError(f"{pid_file} names pid {pid}, which is not {name}: {argv}")
        env = dict(
            item.decode().split("=", 1)
            for item in (proc / "environ").read_bytes().split(b"\0")
            if b"=" in item
        )
        log_file = cluster_dir / "logs" / f"{name}.log"
        return cls(name, pid_file, log_file, argv, env, os.readlink(proc / "cwd"))

    def pid(self) -> int:
        return int(self.pid_file.read_text().strip())

    def alive(self) -> bool:
        pid = self.pid()
        return Path(f"/proc/{pid}").exists() and not _zombie(pid)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` (kube-apiserver drains watches for longer)."""
        pid = self.pid()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        _reap(pid)

    def start(self) -> None:
        _reap(self.pid())
        with self.log_file.open("ab") as log:
            proc = subprocess.Popen(
                self.argv, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.pid_file.write_text(f"{proc.pid}\n")


class ControlPlane:
    """The cluster's components as they run now (to stop and start them)."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        cluster_dir = dev_cluster.cluster_paths(cluster.kubeconfig.parent).cluster_dir
        self.components = {name: Component.of(cluster_dir, name) for name in COMPONENTS}

    @property
    def apiserver(self) -> Component:
        return self.components["kube-apiserver"]

    def restart_apiserver(self, down_for: float) -> tuple[float, float]:
        """Stop kube-apiserver, wait, start it; (seconds to stop, seconds until ready again)."""
        started = time.monotonic()
        self.apiserver.stop()
        stopped = time.monotonic() - started
        time.sleep(down_for)
        self.apiserver.start()
        self.wait_ready()
        return stopped, time.monotonic() - started

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.cluster.kubectl("get", "--raw", "/readyz", timeout=5).strip() == "ok":
                    return
            except Exception:  # not listening yet
                time.sleep(0.3)
            if time.monotonic() > deadline:
                raise RuntimeError(f"kube-apiserver did not come back within {timeout:.0f}s")

    def revive(self) -> list[str]:
        """Start every component that exited; their names."""
        revived = [c.name for c in self.components.values() if not c.alive()]
        for name in revived:
            self.components[name].start()
        return revived


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def _reap(pid: int) -> None:
    """Collect the exit of a process this one started earlier (else it stays a zombie)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
