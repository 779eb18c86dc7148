"""Benchmark of the local Pulumi stack: preview and up, cold and warm, on a bare control plane.

In one run, against a bare control plane of its own (`neuraxis dev cluster up --bare` under a
temporary NEURAXIS_HOME):
- cold: `pulumi preview` and `pulumi up` on a new stack (empty state, nothing in the cluster);
- warm: `pulumi preview` and `pulumi up` again (no changes), and a preview with the policy pack;
- the baseline a user would pick instead: one `kubectl apply --server-side` of the same objects
  (every CRD, the operator, MinIO, prometheus-operator, Prometheus, Grafana, the fake nodes), after
  `pulumi destroy` has emptied the cluster again.

    NEURAXIS_PULUMI_BIN=<dir> .venv/bin/python bench/infra.py [--quick]

--quick skips the cold preview and the policy preview.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def baseline_manifests() -> list[dict[str, Any]]:
    """The objects the local stack makes, as plain manifests (Secrets left out: they carry the
    stack's secret values)."""
    from neuraxis.dev.cluster import node_manifests
    from neuraxis.infra.config import StackConfig
    from neuraxis.infra.lake import lake_uri, minio_manifests
    from neuraxis.infra.monitoring import (
        alert_rules,
        grafana_manifests,
        monitor_manifests,
        prometheus_manifests,
    )
    from neuraxis.infra.nodes import edge_pool, gpu_pool, system_pool
    from neuraxis.infra.platform import crd_manifests, operator_manifests
    from neuraxis.infra.prometheus_operator import in_namespace, load_bundle

    cfg = StackConfig(cloud="local", gpu_nodes=2, gpus_per_node=8, edge_nodes_per_site=2)
    bundle = load_bundle()
    ns = cfg.monitoring_namespace
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
    return [
        *node_manifests([system_pool(cfg.system_nodes), gpu_pool(cfg.gpu_nodes, 8),
                         edge_pool(cfg.edge_sites, cfg.edge_nodes_per_site)]),
        *crd_manifests(),
        *operator_manifests(cfg.image, "neuraxis-system", lake_uri(cfg.lake_bucket)),
        *minio_manifests(cfg.lake_bucket, "10Gi"),
        namespace,
        *bundle.crds,
        *in_namespace(bundle.operator, ns),
        *prometheus_manifests(ns, "15d"),
        *monitor_manifests(ns, "neuraxis-system"),
        alert_rules(ns),
        *grafana_manifests(ns),
    ]  # fmt: skip


def kubectl_apply_seconds(kubeconfig: Path, manifests: list[dict[str, Any]]) -> float:
    from neuraxis.dev.cluster import kubectl

    first = [m for m in manifests if m["kind"] in ("Namespace", "CustomResourceDefinition")]
    rest = [m for m in manifests if m not in first]
    start = time.monotonic()
    for batch in (first, rest):  # custom objects need their CRDs established first
        body = json.dumps({"apiVersion": "v1", "kind": "List", "items": batch})
        kubectl("apply", "--server-side", "--force-conflicts", "--filename=-",
                kubeconfig=kubeconfig, input_text=body, timeout=300)  # fmt: skip
        if batch is first:
            kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=120s",
                    kubeconfig=kubeconfig, timeout=150)  # fmt: skip
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the cold and policy previews")
    args = parser.parse_args()

    from neuraxis.dev import cluster
    from neuraxis.infra.engine import POLICY_PACK_DIR
    from neuraxis.infra.local import LocalStack

    with tempfile.TemporaryDirectory(prefix="neuraxis-bench-infra-") as tmp:
        home = Path(tmp) / "home"
        info = cluster.up(bare=True, home=home, progress=lambda _: None)
        stack = LocalStack.create(state_dir=Path(tmp) / "pulumi", kubeconfig=info.kubeconfig)
        figures: dict[str, float] = {}
        try:
            if not args.quick:
                figures["preview cold"] = stack.preview().seconds
            up = stack.up()
            figures["up cold"] = up.seconds
            resources = sum(up.summary.values())
            figures["preview warm"] = stack.preview(expect_no_changes=True).seconds
            figures["up warm (no changes)"] = stack.up(expect_no_changes=True).seconds
            if not args.quick:
                figures["preview warm + policy pack"] = stack.preview(
                    policy_pack=POLICY_PACK_DIR, expect_no_changes=True
                ).seconds
            figures["destroy"] = stack.destroy().seconds
            stack.remove()
            manifests = baseline_manifests()
            baseline = kubectl_apply_seconds(info.kubeconfig, manifests)
        finally:
            cluster.down(home=home, progress=lambda _: None)

    print(f"local stack: {resources} resources; baseline: one kubectl apply --server-side of "
          f"{len(manifests)} objects (no Secrets, no waiting for readiness)")  # fmt: skip
    print(f"{'step':<30}{'seconds':>9}{'x baseline':>12}")
    for step, seconds in figures.items():
        print(f"{step:<30}{seconds:>9.1f}{seconds / baseline:>12.2f}")
    print(f"{'baseline kubectl apply':<30}{baseline:>9.1f}{1.0:>12.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
