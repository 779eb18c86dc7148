"""Fixtures for tests against the real local control plane (kube-apiserver + KWOK nodes).

`cluster` (session): reuses a running local cluster, or starts one and stops it afterwards.
`namespace` (function): a fresh namespace, deleted after the test.
Every test under tests/cluster gets the `cluster` marker.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from neuraxis.dev import cluster as dev_cluster

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.cluster)


@dataclass(frozen=True)
class Cluster:
    kubeconfig: Path

    def kubectl(self, *args: str, input_text: str | None = None, timeout: float = 60.0) -> str:
        """Run the pinned kubectl against this cluster; returns stdout, raises on failure."""
        return dev_cluster.kubectl(
            *args, kubeconfig=self.kubeconfig, input_text=input_text, timeout=timeout
        )

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "--output=json"))

    def apply(self, manifest: dict[str, Any], namespace: str) -> None:
        self.kubectl(
            "apply", f"--namespace={namespace}", "--filename=-", input_text=json.dumps(manifest)
        )

    def api_client(self) -> Any:
        """A new kubernetes.client.ApiClient for this cluster (close it when done)."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))  # type: ignore[no-untyped-call]


# `0`: a cluster of KWOK nodes only (no kubelet, containerd or bridge), e.g. while another
# NEURAXIS_HOME on this machine holds the one real node; tests that need it then fail.
REAL_NODE_ENV = "NEURAXIS_TEST_REAL_NODE"


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    started_here = not dev_cluster.is_running()
    info = dev_cluster.up(real=os.environ.get(REAL_NODE_ENV, "1") != "0")
    try:
        yield Cluster(info.kubeconfig)
    finally:
        if started_here:
            dev_cluster.down()


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    name = f"nx-test-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    # Pod creation is refused until the controller manager has made the default ServiceAccount.
    _wait_until(lambda: _has_default_sa(cluster, name), what=f"default ServiceAccount in {name}")
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")


def _has_default_sa(cluster: Cluster, namespace: str) -> bool:
    out = cluster.kubectl("get", "serviceaccount", f"--namespace={namespace}", "--output=name")
    return "serviceaccount/default" in out.split()


def _wait_until(check: Callable[[], bool], *, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)
