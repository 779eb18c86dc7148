"""Several replicas of the operator with leader election, for the cluster tests: who holds the
Lease, what each replica's metrics say, and how long a takeover takes."""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path
from typing import Any

from kubernetes import client as k8s

from tests.cluster.conftest import Cluster
from tests.cluster.operator_fixtures import OperatorProcess

LEASE = "neuraxis-operator"
LEASE_SECONDS = 4.0


def leader_settings(namespace: str) -> dict[str, str]:
    """A short lease (4 s, renewed every second): takeovers in seconds, for the tests."""
    return {
        "NEURAXIS_LEADER_ELECTION": "true",
        "NEURAXIS_LEASE_NAMESPACE": namespace,
        "NEURAXIS_LEASE_SECONDS": str(LEASE_SECONDS),
        "NEURAXIS_LEASE_RENEW_SECONDS": "1",
        "NEURAXIS_LEASE_RETRY_SECONDS": "0.5",
    }


def replicas(
    cluster: Cluster, namespace: str, log_dir: Path, count: int = 2, **env: str
) -> list[OperatorProcess]:
    settings = {**leader_settings(namespace), **env}
    return [
        OperatorProcess(cluster, namespace, log_dir, settings, fake_nodes=True, name=f"replica-{i}")
        for i in range(count)
    ]


def metrics(op: OperatorProcess) -> dict[str, float]:
    """`name{labels}` -> value of one replica's /metrics (empty while it is not up)."""
    try:
        url = f"http://127.0.0.1:{op.metrics_port}/metrics"
        body = urllib.request.urlopen(url, timeout=3).read().decode()
    except OSError:
        return {}
    out = {}
    for line in body.splitlines():
        match = re.match(r"^(\w+(?:\{[^}]*\})?) (\S+)$", line)
        if match:
            out[match[1]] = float(match[2])
    return out


def reconciles(op: OperatorProcess) -> float:
    return sum(v for k, v in metrics(op).items() if k.startswith("neuraxis_reconcile_total{"))


class Lease:
    """Reads the leader Lease of a namespace."""

    def __init__(self, cluster: Cluster, namespace: str):
        self.api_client = cluster.api_client()
        self.api = k8s.CoordinationV1Api(self.api_client)
        self.namespace = namespace

    def holder(self) -> str:
        try:
            lease: Any = self.api.read_namespaced_lease(LEASE, self.namespace)
        except Exception:  # absent, or the API server is away for a moment
            return ""
        return str(lease.spec.holder_identity or "")

    def wait_holder(self, among: set[str], timeout: float = 30.0, poll: float = 0.05) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            holder = self.holder()
            if holder in among:
                return holder
            time.sleep(poll)
        raise AssertionError(f"no replica of {sorted(among)} took the lease in {timeout:.0f}s")

    def close(self) -> None:
        self.api_client.close()
