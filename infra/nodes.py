"""Where node pools go (EKS, GKE or the local KWOK control plane) and what their nodes carry.

Labels and taints come from the operator's settings, so the pools match what the operator's
pods select and tolerate; the local node objects come from the dev cluster's own
`node_manifests`, so a stack-made fake node has the same shape as a `make cluster` one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from neuraxis.dev.cluster import GPU_RESOURCE, POOL_LABEL, NodePool, node_manifests
from neuraxis.operator.settings import OperatorSettings

SETTINGS = OperatorSettings()
GPU_LABEL = SETTINGS.gpu_pool_label
GPU_TAINT = SETTINGS.gpu_taint
EDGE_SITE_LABEL = SETTINGS.edge_site_label
EDGE_TAINT = SETTINGS.edge_taint
EDGE_POOL = "edge"
SYSTEM_POOL = "system"
# The dev cluster labels every fake node with its pool under POOL_LABEL; the operator selects
# GPU nodes with gpu_pool_label. They must be the same key for the fake GPU nodes to match.
assert GPU_LABEL[0] == POOL_LABEL, (GPU_LABEL, POOL_LABEL)

Taint = tuple[str, str, str]


@dataclass(frozen=True)
class EksPlacement:
    """Node groups of an EKS cluster."""

    cluster_name: pulumi.Input[str]
    node_role_arn: pulumi.Input[str]
    subnet_ids: pulumi.Input[Sequence[pulumi.Input[str]]]
    kubernetes_version: str


@dataclass(frozen=True)
class GkePlacement:
    """Node pools of a GKE cluster."""

    cluster: pulumi.Input[str]
    location: str
    project: str
    service_account: pulumi.Input[str]


@dataclass(frozen=True)
class LocalPlacement:
    """KWOK-managed Node objects on the local control plane."""


Placement = EksPlacement | GkePlacement | LocalPlacement


def cloud_effect(effect: str) -> str:
    """Kubernetes taint effect (NoSchedule) as EKS and GKE spell it (NO_SCHEDULE)."""
    spelled = {"NoSchedule": "NO_SCHEDULE", "NoExecute": "NO_EXECUTE"}
    spelled["PreferNoSchedule"] = "PREFER_NO_SCHEDULE"
    if effect not in spelled:
        raise ValueError(f"taint effect must be one of {sorted(spelled)}, got {effect!r}")
    return spelled[effect]


def cloud_taints(taints: Sequence[Taint]) -> list[dict[str, str]]:
    return [{"key": k, "value": v, "effect": cloud_effect(e)} for k, v, e in taints]


def gpu_pool(count: int, gpus_per_node: int) -> NodePool:
    return NodePool(
        GPU_LABEL[1], count, taints=(GPU_TAINT,), extra_resources={GPU_RESOURCE: str(gpus_per_node)}
    )


def edge_pool(sites: Sequence[str], per_site: int) -> NodePool:
    labels = tuple({EDGE_SITE_LABEL: site} for site in sites for _ in range(per_site))
    return NodePool(EDGE_POOL, len(labels), taints=(EDGE_TAINT,), node_labels=labels)


def system_pool(count: int) -> NodePool:
    return NodePool(SYSTEM_POOL, count)


def pool_labels(pool: NodePool, index: int = 0) -> dict[str, str]:
    """The Neuraxis labels a cloud node of the pool carries (the same keys as a fake node)."""
    extra = pool.node_labels[index] if index < len(pool.node_labels) else {}
    return {POOL_LABEL: pool.name, **extra}


def local_nodes(
    name: str, pool: NodePool, opts: pulumi.ResourceOptions
) -> tuple[list[dict[str, Any]], k8s.yaml.v2.ConfigGroup]:
    """The pool's fake Node objects, applied as one group.

    A ConfigGroup and not `core.v1.Node`: a fake node must carry its capacity (GPUs) in
    `status` at creation, which the typed Node resource does not accept.
    """
    manifests = node_manifests([pool])
    group = k8s.yaml.v2.ConfigGroup(name, objs=manifests, opts=opts)
    return manifests, group
