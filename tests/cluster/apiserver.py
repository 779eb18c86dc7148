"""Stopping and starting the local cluster's kube-apiserver (binary runtime: a plain process),
for the chaos test: the same command line, environment and working directory come back, and
the pid file kwokctl keeps is updated, so `cluster down` still finds it."""

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


@dataclass
class ApiServer:
    pid_file: Path
    log_file: Path
    argv: list[str]
    env: dict[str, str]
    cwd: str

    @classmethod
    def of(cls, cluster: Cluster) -> ApiServer:
        cluster_dir = dev_cluster.cluster_paths(cluster.kubeconfig.parent).cluster_dir
        pid_file = cluster_dir / "pids" / "kube-apiserver.pid"
        pid = int(pid_file.read_text().strip())
        proc = Path(f"/proc/{pid}")
        argv = [a.decode() for a in (proc / "cmdline").read_bytes().split(b"\0") if a]
        if not argv or not argv[0].endswith("kube-apiserver"):
            raise RuntimeError(f"{pid_file} names pid {pid}, which is not kube-apiserver: {argv}")
        env = dict(
            item.decode().split("=", 1)
            for item in (proc / "environ").read_bytes().split(b"\0")
            if b"=" in item
        )
        return cls(
            pid_file,
            cluster_dir / "logs" / "kube-apiserver.log",
            argv,
            env,
            os.readlink(proc / "cwd"),
        )

    def pid(self) -> int:
        return int(self.pid_file.read_text().strip())

    def stop(self, timeout: float = 30.0) -> None:
        pid = self.pid()
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while Path(f"/proc/{pid}").exists():
            if _zombie(pid):
                with_suppressed_wait(pid)
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)

    def start(self, cluster: Cluster, timeout: float = 60.0) -> None:
        with self.log_file.open("ab") as log:
            proc = subprocess.Popen(
                self.argv, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.pid_file.write_text(f"{proc.pid}\n")
        deadline = time.monotonic() + timeout
        while True:
            try:
                if cluster.kubectl("get", "--raw", "/readyz", timeout=5).strip() == "ok":
                    return
            except Exception:  # not listening yet
                time.sleep(0.3)
            if time.monotonic() > deadline:
                raise RuntimeError(f"kube-apiserver did not come back within {timeout:.0f}s")
            time.sleep(0.3)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def with_suppressed_wait(pid: int) -> None:
    """Reap a child of this process (an apiserver this test started earlier)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
