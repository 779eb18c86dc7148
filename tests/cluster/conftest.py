"""Fixtures for tests against the real local control plane (kube-apiserver + KWOK nodes).

`cluster` (session): reuses a running local cluster, or starts one and stops it afterwards.
`namespace` (function): a fresh namespace, deleted after the test.
For workloads in real pods: `real_node` (its name), `workload_image` (built offline, imported
into the node) and `node_lake` (MinIO on the node's bridge address; pods cannot reach the host's
loopback), each per test module.
Every test under tests/cluster gets the `cluster` marker.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from neuraxis.dev import cluster as dev_cluster
from neuraxis.dev import image as dev_image
from neuraxis.dev import lake as dev_lake
from neuraxis.dev import node as dev_node
from neuraxis.dev.cluster import KWOK_NODE_ANNOTATION
from neuraxis.dev.lake import LakeServer
from neuraxis.lake import Lake, S3Settings

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


# ---------------------------------------------------------------------------------------------
# real pods


@dataclass(frozen=True)
class NodeLake:
    """A MinIO for one test module, which a test may stop and start again (same keys, data)."""

    home: Path
    server: LakeServer

    def stop(self) -> None:
        dev_lake.stop(self.home)

    def start(self) -> None:
        host, port = self.server.endpoint.removeprefix("http://").rsplit(":", 1)
        dev_lake.start(self.home, host=host, port=int(port), bucket=self.server.bucket)

    def client(self) -> Lake:
        """The lake as the test reads it (the same bucket and prefix the pods write)."""
        s3 = S3Settings(
            self.server.endpoint, self.server.access_key, self.server.secret_key, dev_lake.REGION
        )
        return Lake(self.server.lake_uri, s3=s3)


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def real_node(cluster: Cluster) -> str:
    """The one node that is not KWOK's."""
    nodes = cluster.kubectl_json("get", "nodes")["items"]
    real = [
        n["metadata"]["name"]
        for n in nodes
        if KWOK_NODE_ANNOTATION not in (n["metadata"].get("annotations") or {})
    ]
    assert len(real) == 1, f"expected one real node, found {real}"
    return str(real[0])


@pytest.fixture(scope="module")
def workload_image(cluster: Cluster) -> str:
    """The checkout's workload image, built offline and present in the node's containerd."""
    return dev_image.build_and_import().ref


@pytest.fixture(scope="module")
def node_lake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeLake]:
    """MinIO on the node's bridge address: pods reach it, nothing outside the machine does."""
    home = tmp_path_factory.mktemp("node-lake")
    port = free_port(dev_node.NODE_IP)
    server = dev_lake.start(home, host=dev_node.NODE_IP, port=port, bucket="node-lake")
    lake = NodeLake(home, server)
    try:
        yield lake
    finally:
        lake.stop()
