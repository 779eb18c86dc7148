"""Running the real operator (`neuraxis operator`) as a subprocess against the test cluster, and
helpers to feed workload results through the kubelet path (KWOK writes the termination message
that a pod annotation carries, exactly where a real kubelet would put the workload's)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from neuraxis.dev import toolchain
from neuraxis.dev.cluster import EDGE_SITE_LABEL
from neuraxis.operator.children import POD_ANNOTATIONS
from tests.cluster.conftest import Cluster
from tests.conftest import EXAMPLES

TERMINATION_ANNOTATION = "neuraxis.dev/kwok-termination-message"
FAIL_ANNOTATION = "neuraxis.dev/kwok-fail"
# KWOK node pools carry this taint so that real workloads land on the real node only.
KWOK_TAINT = {"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}
# Operator settings for tests whose workload results are fabricated on KWOK nodes: their pods
# go to the fake nodes only, and the fault-injection annotations are allowed.
FAKE_NODE_SETTINGS = {
    "NEURAXIS_WORKLOAD_TOLERATIONS": json.dumps([{**KWOK_TAINT, "operator": "Equal"}]),
    "NEURAXIS_WORKLOAD_NODE_SELECTOR": json.dumps({"type": "kwok"}),
    "NEURAXIS_ALLOW_KWOK_ANNOTATIONS": "true",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OperatorProcess:
    """`neuraxis operator` watching one namespace, restartable (for the restart tests).

    `fake_nodes=True`: the workload pods go to KWOK nodes and results come from annotations
    (FAKE_NODE_SETTINGS); False: they run on the real node. `env` adds operator settings."""

    def __init__(
        self,
        cluster: Cluster,
        namespace: str,
        log_dir: Path,
        env: dict[str, str] | None = None,
        *,
        fake_nodes: bool = False,
        name: str = "",
    ):
        self.cluster = cluster
        self.namespace = namespace
        self.name = name  # a replica's name (its log file and, with leader election, identity)
        self.log_path = log_dir / f"operator-{namespace}{'-' + name if name else ''}.log"
        self.metrics_port = free_port()
        self.settings = {**(FAKE_NODE_SETTINGS if fake_nodes else {}), **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.cluster.kubeconfig),
            "NEURAXIS_RESYNC_SECONDS": "3",
            "PYTHONUNBUFFERED": "1",
            **({"POD_NAME": self.name} if self.name else {}),
            **self.settings,
        }
        log = open(self.log_path, "ab")  # noqa: SIM115 (owned by the child process)
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "neuraxis.cli", "operator", "--namespace", self.namespace,
                "--metrics-port", str(self.metrics_port), "--liveness-port", str(free_port()),
            ],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-40:])


@contextmanager
def running_operator(
    cluster: Cluster,
    namespace: str,
    log_dir: Path,
    env: dict[str, str] | None = None,
    *,
    fake_nodes: bool = False,
) -> Iterator[OperatorProcess]:
    op = OperatorProcess(cluster, namespace, log_dir, env, fake_nodes=fake_nodes)
    op.start()
    try:
        yield op
    finally:
        op.stop()


@contextmanager
def node_in_site(cluster: Cluster, node: str, site: str) -> Iterator[str]:
    """The node joins edge site `site` (the label the operator selects sites by) until the
    block ends."""
    cluster.kubectl("label", "node", node, f"{EDGE_SITE_LABEL}={site}", "--overwrite")
    try:
        yield node
    finally:
        cluster.kubectl("label", "node", node, f"{EDGE_SITE_LABEL}-")


def example(name: str, folder: str = "smart-manufacturing") -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES / folder / name).read_text())
    return doc


def with_result(
    resource: dict[str, Any], result: dict[str, Any] | None = None, *, fail: bool = False
) -> dict[str, Any]:
    """The resource, annotated so that its workload pods 'report' `result` (and fail if asked)."""
    annotations: dict[str, str] = {}
    if result is not None:
        annotations[TERMINATION_ANNOTATION] = json.dumps(result)
    if fail:
        annotations[FAIL_ANNOTATION] = "true"
    meta = resource.setdefault("metadata", {})
    meta.setdefault("annotations", {})[POD_ANNOTATIONS] = json.dumps(annotations)
    return resource


def wait_for(
    check: Callable[[], Any], what: str, timeout: float = 90.0, op: OperatorProcess | None = None
) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.5)
    tail = f"\noperator log:\n{op.log_tail()}" if op else ""
    raise AssertionError(
        f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r}){tail}"
    )


def get(cluster: Cluster, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
    try:
        out: dict[str, Any] = cluster.kubectl_json("get", kind, name, "--namespace", namespace)
    except Exception:
        return None
    return out


def phase(cluster: Cluster, kind: str, name: str, namespace: str) -> str | None:
    obj = get(cluster, kind, name, namespace)
    return ((obj or {}).get("status") or {}).get("phase")


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return None


def can_i(cluster: Cluster, *args: str) -> bool:
    """`kubectl auth can-i`: True for "yes", False for "no" (exit 1), and an error for anything
    else, so that a failing call cannot pass as a "no"."""
    argv = [str(toolchain.tool_path("kubectl")), f"--kubeconfig={cluster.kubeconfig}"]
    done = subprocess.run(
        [*argv, "auth", "can-i", *args], capture_output=True, text=True, timeout=60
    )
    answer = done.stdout.strip()
    if done.returncode == 0 and answer == "yes":
        return True
    if done.returncode == 1 and (answer == "no" or answer.startswith("no - ")):
        return False
    raise AssertionError(
        f"kubectl auth can-i {' '.join(args)}: exit {done.returncode}, "
        f"stdout {done.stdout!r}, stderr {done.stderr!r}"
    )


def names(cluster: Cluster, kind: str, namespace: str, selector: str) -> list[str]:
    out = cluster.kubectl("get", kind, "--namespace", namespace, "-l", selector, "--output=name")
    return sorted(out.split())


def run_client_pod(
    cluster: Cluster,
    namespace: str,
    image: str,
    name: str,
    script: str,
    timeout: float = 180,
    env_secret: str | None = None,
) -> str:
    """Run `python -c script` in a pod of the workload image (with the keys of Secret
    `env_secret` as its environment, if given); returns its log (stdout)."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001},
            "containers": [
                {
                    "name": "client",
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["python", "-c", script],
                    "envFrom": [{"secretRef": {"name": env_secret}}] if env_secret else [],
                    "securityContext": {
                        "readOnlyRootFilesystem": True,
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }
    cluster.apply(pod, namespace)
    deadline = time.monotonic() + timeout
    while True:
        got = cluster.kubectl_json("get", "pod", name, "--namespace", namespace)
        pod_phase = got.get("status", {}).get("phase")
        if pod_phase in ("Succeeded", "Failed"):
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"client pod {name} still {pod_phase} after {timeout:.0f}s")
        time.sleep(1)
    logs = cluster.kubectl("logs", name, "--namespace", namespace)
    assert pod_phase == "Succeeded", f"client pod {name} failed:\n{logs}"
    return logs
