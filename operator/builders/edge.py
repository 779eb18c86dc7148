"""EdgeDeployment -> a bundle Job, then DaemonSets on the matching edge nodes: the canary nodes
first (chosen deterministically and pinned by node name), the rest once the canary is ready."""

from __future__ import annotations

from typing import Any

from neuraxis.crds import EdgeDeployment
from neuraxis.operator.builders.common import RUN_ID_ENV, job, spec_config_map
from neuraxis.operator.children import child_metadata, run_name
from neuraxis.operator.pods import pod_template, resource_limits, workload_container
from neuraxis.operator.settings import OperatorSettings

NodeInfo = dict[str, Any]  # {"name": str, "labels": {...}}


def matching_nodes(ed: EdgeDeployment, nodes: list[NodeInfo], site_label: str) -> list[str]:
    """Names of the nodes the deployment targets, sorted (so the canary choice is stable)."""
    target = ed.spec.target
    out = []
    for node in nodes:
        labels = node.get("labels") or {}
        if target.sites and labels.get(site_label) not in target.sites:
            continue
        if any(labels.get(k) != v for k, v in target.node_selector.items()):
            continue
        out.append(node["name"])
    return sorted(out)


def canary_nodes(ed: EdgeDeployment, targeted: list[str]) -> list[str]:
    return targeted[: ed.spec.rollout.canary_nodes]


def bundle_command(ed: EdgeDeployment, model: str, run_id: str) -> list[str]:
    """The bundle workload for the ModelVersion (registered as `model`) the rollout uses."""
    return [
        "neuraxis", "workload", "bundle", "--model", model,
        "--version", ed.spec.model_version_ref.name,
        "--namespace", ed.metadata.namespace or "default",
        "--run-id", run_id, "--quantize", ed.spec.optimize.quantize,
    ]  # fmt: skip


def build_bundle_children(
    ed: EdgeDeployment, model: str, settings: OperatorSettings
) -> list[dict[str, Any]]:
    name = run_name(ed, "bundle")
    command = bundle_command(ed, model, "$(NEURAXIS_RUN_ID)")
    container = workload_container(
        ed, settings, command, resources=resource_limits("1", "2Gi"), extra_env=[RUN_ID_ENV]
    )
    template = pod_template(ed, settings, "bundle", container, name)
    return [spec_config_map(ed, name, "bundle"), job(ed, name, "bundle", template)]


def _daemon_set(
    ed: EdgeDeployment,
    name: str,
    bundle_uri: str,
    nodes: list[str],
    operator: str,
    settings: OperatorSettings,
) -> dict[str, Any]:
    port = settings.edge_port
    command = [
        "neuraxis", "workload", "edge", "--bundle", bundle_uri,
        "--cache-dir", "/var/cache/neuraxis", "--port", str(port),
    ]  # fmt: skip
    container = workload_container(
        ed,
        settings,
        command,
        resources=resource_limits("500m", "512Mi"),
        ports=[{"name": "http", "containerPort": port}],
    )
    container["volumeMounts"].append({"name": "cache", "mountPath": "/var/cache/neuraxis"})
    container["readinessProbe"] = {"httpGet": {"path": "/readyz", "port": "http"}}
    key, value, effect = settings.edge_taint
    tolerations = [{"key": key, "operator": "Equal", "value": value, "effect": effect}]
    tolerations += [t.model_dump(exclude_none=True) for t in ed.spec.target.tolerations]
    terms: list[dict[str, Any]] = []
    if ed.spec.target.sites:
        terms.append(
            {
                "key": settings.edge_site_label,
                "operator": "In",
                "values": sorted(ed.spec.target.sites),
            }
        )
    terms += [
        {"key": k, "operator": "In", "values": [v]}
        for k, v in sorted(ed.spec.target.node_selector.items())
    ]
    node_terms: dict[str, Any] = {"matchExpressions": terms}
    if nodes:
        node_terms["matchFields"] = [
            {"key": "metadata.name", "operator": operator, "values": sorted(nodes)}
        ]
    scheduling = {
        "tolerations": tolerations,
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [node_terms]
                }
            }
        },
    }
    template = pod_template(
        ed, settings, "edge-agent", container, name, restart_policy="Always", scheduling=scheduling
    )
    # The cache must outlive pod restarts on the node (offline start): a hostPath per deployment.
    template["spec"]["volumes"].append(
        {
            "name": "cache",
            "hostPath": {
                "path": f"/var/lib/neuraxis/{ed.metadata.name}",
                "type": "DirectoryOrCreate",
            },
        }
    )
    selector = {"neuraxis.dev/edgedeployment": ed.metadata.name, "neuraxis.dev/edge-group": name}
    template["metadata"]["labels"]["neuraxis.dev/edge-group"] = name
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": child_metadata(ed, name, "edge-agent"),
        "spec": {
            "selector": {"matchLabels": selector},
            "updateStrategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": ed.spec.rollout.max_unavailable},
            },
            "template": template,
        },
    }


def canary_daemon_set_name(ed: EdgeDeployment) -> str:
    return f"{ed.metadata.name}-canary"


def build_edge_daemon_sets(
    ed: EdgeDeployment,
    bundle_uri: str,
    targeted: list[str],
    settings: OperatorSettings,
    *,
    canary_ready: bool,
) -> list[dict[str, Any]]:
    """The canary DaemonSet always; the main one once the canary is ready (and not paused)."""
    canary = canary_nodes(ed, targeted)
    sets = []
    if canary:
        sets.append(_daemon_set(ed, canary_daemon_set_name(ed), bundle_uri, canary, "In", settings))
    if (canary_ready or not canary) and not ed.spec.rollout.pause:
        sets.append(_daemon_set(ed, ed.metadata.name, bundle_uri, canary, "NotIn", settings))
    return sets
