"""Per-site counts of an EdgeDeployment's agents, from what Kubernetes says about its nodes and
pods (no agent reports itself: a node that cannot reach the API server cannot say it is offline).

- desired: targeted nodes of the site;
- ready: nodes whose agent pod is Ready (and not being deleted);
- updated: nodes whose agent pod was made from its DaemonSet's current template
  (`pod-template-generation` label = the DaemonSet's generation);
- offline: targeted nodes whose Ready condition is not True (kubelet silent or unhealthy).
"""

from __future__ import annotations

from typing import Any

from neuraxis.operator.informer import EDGE_GROUP_LABEL, TEMPLATE_GENERATION_LABEL

Obj = dict[str, Any]
NO_SITE = "-"  # targeted through nodeSelector alone


def node_ready(node: Obj) -> bool:
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def pod_ready(pod: Obj) -> bool:
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def pod_updated(pod: Obj, generations: dict[str, int]) -> bool:
    """Made from the current template of its DaemonSet (one of this deployment's)."""
    meta = pod.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return False
    labels = meta.get("labels") or {}
    generation = generations.get(labels.get(EDGE_GROUP_LABEL) or "")
    return generation is not None and labels.get(TEMPLATE_GENERATION_LABEL) == str(generation)


def site_counts(
    targeted: list[str],
    nodes: list[Obj],
    pods: list[Obj],
    daemon_sets: list[Obj],
    site_label: str,
) -> list[dict[str, Any]]:
    """`status.sites`: one entry per site of the targeted nodes, sorted by name."""
    by_name = {n["metadata"]["name"]: n for n in nodes}
    generations = {
        d["metadata"]["name"]: int(d["metadata"].get("generation") or 0) for d in daemon_sets
    }
    pods_on: dict[str, list[Obj]] = {}
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        if node:
            pods_on.setdefault(node, []).append(pod)
    sites: dict[str, dict[str, Any]] = {}
    for name in targeted:
        node = by_name.get(name) or {"metadata": {"name": name}}
        site = ((node["metadata"].get("labels") or {}).get(site_label)) or NO_SITE
        entry = sites.setdefault(
            site, {"name": site, "desired": 0, "ready": 0, "updated": 0, "offline": 0}
        )
        entry["desired"] += 1
        on_node = pods_on.get(name, [])
        entry["ready"] += any(pod_ready(p) for p in on_node)
        entry["updated"] += any(pod_updated(p, generations) for p in on_node)
        entry["offline"] += not node_ready(node)
    return [sites[k] for k in sorted(sites)]
