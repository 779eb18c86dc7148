"""The real engine: `pulumi up` of the local stack against a bare control plane of its own (its
own NEURAXIS_HOME, so its own ports: the shared `cluster` fixture's full cluster is untouched),
then what exists, a second up with no changes, a preview with the policy pack, and a destroy
that leaves nothing behind."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from neuraxis.dev import cluster as dev_cluster
from neuraxis.infra.engine import POLICY_PACK_DIR, EngineError, missing_binaries, pulumi_bin_dir
from neuraxis.infra.local import STACK_FILE, LocalStack
from neuraxis.operator.manifests import REPLICAS as OPERATOR_REPLICAS

pytestmark = [pytest.mark.cluster, pytest.mark.engine]

NEURAXIS_CRDS = {f"{p}.neuraxis.dev" for p in
                 ("datasets", "trainingjobs", "modelversions", "edgedeployments")}  # fmt: skip
MONITORING_CRDS = {
    f"{p}.monitoring.coreos.com"
    for p in ("prometheuses", "servicemonitors", "podmonitors", "prometheusrules")
}
STACK_NAMESPACES = {"neuraxis-system", "neuraxis-lake", "monitoring"}


@pytest.fixture(scope="module")
def bare_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    missing = missing_binaries(pulumi_bin_dir())
    if missing:
        pytest.skip(f"Pulumi binaries not built in {pulumi_bin_dir()}: {missing} "
                    "(make tools builds them)")  # fmt: skip
    home = tmp_path_factory.mktemp("bare-cluster")
    info = dev_cluster.up(bare=True, home=home)
    try:
        yield info.kubeconfig
    finally:
        dev_cluster.down(home=home)


def kubectl_json(kubeconfig: Path, *args: str) -> Any:
    return json.loads(dev_cluster.kubectl(*args, "--output=json", kubeconfig=kubeconfig))


def names(kubeconfig: Path, kind: str) -> set[str]:
    return {i["metadata"]["name"] for i in kubectl_json(kubeconfig, "get", kind)["items"]}


def test_up_again_preview_with_policies_and_destroy(bare_cluster: Path, tmp_path: Path) -> None:
    kubeconfig = bare_cluster
    assert names(kubeconfig, "nodes") == set()  # bare: the stack makes every node
    committed = STACK_FILE.read_text()
    stack = LocalStack.create(state_dir=tmp_path / "pulumi", kubeconfig=kubeconfig)
    try:
        first = stack.up()
        assert first.summary.get("create", 0) > 50, first.summary

        crds = {c["metadata"]["name"]: c for c in
                kubectl_json(kubeconfig, "get", "crd")["items"]}  # fmt: skip
        assert set(crds) >= NEURAXIS_CRDS | MONITORING_CRDS
        for name in NEURAXIS_CRDS | MONITORING_CRDS:
            conditions = {c["type"]: c["status"] for c in crds[name]["status"]["conditions"]}
            assert conditions.get("Established") == "True", name
        operator = kubectl_json(
            kubeconfig, "get", "deployment", "neuraxis-operator", "--namespace=neuraxis-system"
        )
        # Every replica runs (one holds the Lease; KWOK's fake pods count as available).
        assert operator["status"].get("availableReplicas") == OPERATOR_REPLICAS
        pod = operator["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        nodes = kubectl_json(kubeconfig, "get", "nodes")["items"]
        by_pool: dict[str, list[dict[str, Any]]] = {}
        for node in nodes:
            by_pool.setdefault(node["metadata"]["labels"]["neuraxis.dev/pool"], []).append(node)
            ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}
            assert ready["Ready"] == "True", node["metadata"]["name"]
        assert {pool: len(group) for pool, group in by_pool.items()} == {
            "gpu": 2,
            "edge": 4,
            "system": 2,
        }
        for node in by_pool["gpu"]:
            assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
            assert node["spec"]["taints"][0]["key"] == "nvidia.com/gpu"
        sites = sorted(n["metadata"]["labels"]["neuraxis.dev/edge-site"] for n in by_pool["edge"])
        assert sites == ["plant-a", "plant-a", "plant-b", "plant-b"]
        outputs = stack.outputs()
        assert outputs["lakeUri"] == "s3://neuraxis-lake/lake"
        assert outputs["grafanaUrl"] == "http://grafana.monitoring.svc:3000"

        stack.up(expect_no_changes=True)  # fails (non-zero exit) on any change
        checked = stack.preview(policy_pack=POLICY_PACK_DIR, expect_no_changes=True)
        assert checked.summary.get("same", 0) == sum(first.summary.values()), checked.summary

        stack.destroy()
        remaining = {c for c in names(kubeconfig, "crd")}
        assert not remaining & (NEURAXIS_CRDS | MONITORING_CRDS), remaining
        assert names(kubeconfig, "nodes") == set()
        _wait_gone(kubeconfig, STACK_NAMESPACES)
    finally:
        if _has_resources(stack):  # a failed step above: leave the cluster clean anyway
            stack.destroy()
        stack.remove()
    assert STACK_FILE.read_text() == committed  # the stack's state never rewrites the repo file


def _has_resources(stack: LocalStack) -> bool:
    try:
        return bool(stack.outputs())
    except EngineError:
        return False


def _wait_gone(kubeconfig: Path, namespaces: set[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while left := names(kubeconfig, "namespaces") & namespaces:
        if time.monotonic() > deadline:
            raise AssertionError(f"namespaces left after destroy: {sorted(left)}")
        time.sleep(1)
