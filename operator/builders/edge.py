"""EdgeDeployment -> a bundle Job, then DaemonSets on the matching edge nodes: the canary nodes
first (chosen deterministically and pinned by node name), the rest once the canary is ready."""

from __future__ import annotations

import json
from typing import Any

from neuraxis.crds import EdgeDeployment
from neuraxis.crds.common import DatasetRef
from neuraxis.lake import EDGE_SITE_ENV, NODE_SITES_FILE
from neuraxis.operator.builders.auth import auth_args, mount_api_keys
from neuraxis.operator.builders.common import RUN_ID_ENV, job, spec_config_map
from neuraxis.operator.children import SPEC_MOUNT, child_metadata, run_name
from neuraxis.operator.pods import (
    WORKLOAD_UID,
    pod_template,
    resource_limits,
    workload_container,
)
from neuraxis.operator.settings import OperatorSettings

NodeInfo = dict[str, Any]  # {"name": str, "labels": {...}, "taints": [...]}
CACHE_MOUNT = "/var/cache/neuraxis"
BUNDLE_COMPONENT = "bundle"
# Taint effects that keep a pod (a DaemonSet's too) off a node unless tolerated.
BLOCKING_EFFECTS = ("NoSchedule", "NoExecute")
# Taints Kubernetes puts on a node for its state (not-ready, unreachable, pressure, cordoned):
# the DaemonSet controller tolerates them for its pods (an agent keeps running on a node that
# lost its kubelet for a while), so such a node stays targeted and counts as offline instead of
# leaving the fleet (and shifting the canary choice).
NODE_STATE_TAINT_PREFIX = "node.kubernetes.io/"


def edge_toleration(settings: OperatorSettings) -> dict[str, Any]:
    """Tolerates the taint that keeps ordinary workloads off edge nodes."""
    key, value, effect = settings.edge_taint
    return {"key": key, "operator": "Equal", "value": value, "effect": effect}


def agent_tolerations(ed: EdgeDeployment, settings: OperatorSettings) -> list[dict[str, Any]]:
    """The edge taint, the spec's own tolerations and the platform-wide ones."""
    tolerations = [edge_toleration(settings)]
    tolerations += [t.model_dump(exclude_none=True) for t in ed.spec.target.tolerations]
    tolerations += [t for t in settings.workload_tolerations if t not in tolerations]
    return tolerations


def tolerates(tolerations: list[dict[str, Any]], taint: dict[str, Any]) -> bool:
    """Whether one of the tolerations matches the taint (the scheduler's rule)."""
    for t in tolerations:
        if t.get("effect") and t["effect"] != taint.get("effect"):
            continue
        if t.get("operator", "Equal") == "Exists":
            if not t.get("key") or t["key"] == taint.get("key"):
                return True
        elif t.get("key") == taint.get("key") and (t.get("value") or "") == (
            taint.get("value") or ""
        ):
            return True
    return False


def matching_nodes(
    ed: EdgeDeployment, nodes: list[NodeInfo], settings: OperatorSettings
) -> list[str]:
    """Names of the nodes the agents can run on, sorted (so the canary choice is stable): the
    spec's sites and selector, the platform's node selector, and no taint the agents do not
    tolerate (a DaemonSet places no pod there, so such a node would never become ready)."""
    target = ed.spec.target
    tolerations = agent_tolerations(ed, settings)
    out = []
    for node in nodes:
        labels = node.get("labels") or {}
        if target.sites and labels.get(settings.edge_site_label) not in target.sites:
            continue
        wanted = {**settings.workload_node_selector, **target.node_selector}
        if any(labels.get(k) != v for k, v in wanted.items()):
            continue
        blocking = [
            t
            for t in node.get("taints") or []
            if t.get("effect") in BLOCKING_EFFECTS
            and not str(t.get("key") or "").startswith(NODE_STATE_TAINT_PREFIX)
        ]
        if not all(tolerates(tolerations, t) for t in blocking):
            continue
        out.append(node["name"])
    return sorted(out)


def canary_nodes(ed: EdgeDeployment, targeted: list[str]) -> list[str]:
    return targeted[: ed.spec.rollout.canary_nodes]


def bundle_command(
    ed: EdgeDeployment,
    model: str,
    run_id: str,
    artifact_uri: str | None = None,
    artifact_digest: str | None = None,
    heldout: DatasetRef | None = None,
) -> list[str]:
    """The bundle workload for the ModelVersion (registered as `model`) the rollout uses: its
    pinned artifact (uri and digest, verified by the bundle), judged on `heldout` (the
    version's evaluation Dataset) when given, else on its training job's test split."""
    held: list[str] = []
    if heldout is not None:
        held += ["--heldout-dataset", heldout.name]
        held += ["--heldout-namespace", heldout.namespace] if heldout.namespace else []
        held += ["--heldout-version", str(heldout.version)] if heldout.version is not None else []
    return [
        "neuraxis", "workload", "bundle", "--model", model,
        "--version", ed.spec.model_version_ref.name,
        "--namespace", ed.metadata.namespace or "default",
        "--run-id", run_id, "--quantize", ed.spec.optimize.quantize,
        *(["--artifact-uri", artifact_uri] if artifact_uri else []),
        *(["--artifact-digest", artifact_digest] if artifact_digest else []),
        *held,
    ]  # fmt: skip


def build_bundle_children(
    ed: EdgeDeployment,
    model: str,
    settings: OperatorSettings,
    artifact_uri: str | None = None,
    artifact_digest: str | None = None,
    heldout: DatasetRef | None = None,
) -> list[dict[str, Any]]:
    name = run_name(ed, "bundle")
    command = bundle_command(
        ed, model, "$(NEURAXIS_RUN_ID)", artifact_uri, artifact_digest, heldout
    )
    container = workload_container(
        ed, settings, command, resources=resource_limits("1", "2Gi"), extra_env=[RUN_ID_ENV]
    )
    template = pod_template(ed, settings, BUNDLE_COMPONENT, container, name)
    return [spec_config_map(ed, name, "bundle"), job(ed, name, "bundle", template)]


def agent_config_map_name(ed: EdgeDeployment) -> str:
    """The spec ConfigMap every agent pod mounts (both DaemonSets share it)."""
    return f"{ed.metadata.name}-agent"


def cache_owner_init_container(settings: OperatorSettings) -> dict[str, Any]:
    """Hands the node's cache directory to the agent's uid before the agent starts.

    Trade-off: the cache must survive pod restarts and node reboots (the agent starts offline
    from it), so it is a hostPath; kubelet creates a missing hostPath root:root 0755 and fsGroup
    does not apply to hostPath, so the non-root agent could not write it. This container runs as
    root, but only with CHOWN (set the owner) and FOWNER (then set the mode on a directory root
    no longer owns), no privilege escalation, a read-only root and only that one directory
    mounted; the agent itself stays uid 10001 with no capabilities. The cost: hostPath and a
    root init container need a namespace that admits them (Pod Security `privileged`; hostPath
    alone already rules out `baseline`). Mode 0700: other users on the node cannot read the
    cached bundle or the buffered inference logs."""
    uid = str(WORKLOAD_UID)
    return {
        "name": "cache-owner",
        "image": settings.image,
        "command": ["install", "-d", "-o", uid, "-g", uid, "-m", "0700", CACHE_MOUNT],
        "resources": resource_limits("100m", "64Mi"),
        "securityContext": {
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": False,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"], "add": ["CHOWN", "FOWNER"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": "cache", "mountPath": CACHE_MOUNT}],
    }


def load_flags(ed: EdgeDeployment) -> list[str]:
    """spec.load and the health snapshots of spec.sync as agent flags."""
    load, sync = ed.spec.load, ed.spec.sync
    target = load.latency_target_ms
    return [
        "--max-in-flight", str(load.max_in_flight),
        "--retry-after-s", str(load.retry_after_seconds),
        "--max-batch-size", str(load.max_batch_size),
        "--min-batch-size", str(load.min_batch_size),
        *(["--latency-target-ms", str(target)] if target is not None else []),
        "--health-interval-s", str(sync.health_interval_seconds),
        "--max-buffered-snapshots", str(sync.max_buffered_snapshots),
    ]  # fmt: skip


def _logging_flags(ed: EdgeDeployment) -> list[str]:
    threshold = ed.spec.logging.hard_example_threshold
    flags = ["--node-sites", f"{SPEC_MOUNT}/{NODE_SITES_FILE}"]
    return flags + (["--hard-example-threshold", repr(threshold)] if threshold is not None else [])


def node_sites(nodes: list[NodeInfo], settings: OperatorSettings) -> dict[str, str]:
    """Node name -> edge site (the node label), for the agents' log records."""
    out = {}
    for node in nodes:
        site = (node.get("labels") or {}).get(settings.edge_site_label)
        if site:
            out[str(node["name"])] = str(site)
    return out


def _site_env(ed: EdgeDeployment) -> list[dict[str, Any]]:
    """The site of a one-site deployment. With several, a DaemonSet spans sites and the
    downward API cannot read a node's labels: the agents look their node up in the map the
    spec ConfigMap carries (`node_sites`)."""
    sites = ed.spec.target.sites
    return [{"name": EDGE_SITE_ENV, "value": sites[0]}] if len(sites) == 1 else []


def _daemon_set(
    ed: EdgeDeployment,
    name: str,
    bundle_uri: str,
    nodes: list[str],
    operator: str,
    settings: OperatorSettings,
    bundle_digest: str,
) -> dict[str, Any]:
    port, grpc_port = settings.edge_port, settings.edge_grpc_port
    # All interfaces: the kubelet's probes and clients come in on the pod IP. `--digest`: the
    # agent serves that bundle only; a new bundle comes with a new template (a rollout).
    command = [
        "neuraxis", "workload", "edge", "--bundle", bundle_uri,
        "--cache-dir", CACHE_MOUNT, "--host", "0.0.0.0", "--port", str(port),
        "--grpc-port", str(grpc_port),
        "--deployment", ed.metadata.name,
        "--sync-interval-s", str(ed.spec.sync.interval_seconds),
        "--digest", bundle_digest,
        *auth_args(ed.spec.auth),
        *load_flags(ed),
        *_logging_flags(ed),
    ]  # fmt: skip
    node_name = {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}
    container = workload_container(
        ed,
        settings,
        command,
        resources=resource_limits("500m", "512Mi"),
        extra_env=[node_name, *_site_env(ed)],  # the log path names the node, not the pod
        ports=[
            {"name": "http", "containerPort": port},
            {"name": "grpc", "containerPort": grpc_port},
        ],
    )
    container["volumeMounts"].append({"name": "cache", "mountPath": CACHE_MOUNT})
    container["readinessProbe"] = {"httpGet": {"path": "/readyz", "port": "http"}}
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
        "tolerations": agent_tolerations(ed, settings),
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [node_terms]
                }
            }
        },
    }
    template = pod_template(
        ed,
        settings,
        "edge-agent",
        container,
        agent_config_map_name(ed),
        restart_policy="Always",
        scheduling=scheduling,
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
    template["spec"]["initContainers"] = [cache_owner_init_container(settings)]
    mount_api_keys(template, ed.spec.auth)
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
    bundle_digest: str,
) -> list[dict[str, Any]]:
    """The canary DaemonSet always; the main one once the canary is ready (and not paused)."""
    canary = canary_nodes(ed, targeted)
    sets = []
    if canary:
        name = canary_daemon_set_name(ed)
        sets.append(_daemon_set(ed, name, bundle_uri, canary, "In", settings, bundle_digest))
    if (canary_ready or not canary) and not ed.spec.rollout.pause:
        sets.append(
            _daemon_set(ed, ed.metadata.name, bundle_uri, canary, "NotIn", settings, bundle_digest)
        )
    return sets


def build_edge_agent_children(
    ed: EdgeDeployment,
    bundle_uri: str,
    targeted: list[str],
    settings: OperatorSettings,
    *,
    canary_ready: bool,
    bundle_digest: str,
    sites: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """The agents' spec ConfigMap and the DaemonSets that mount it (none: no ConfigMap).
    `bundle_digest`: the bundle the EdgeDeployment pinned; agents refuse any other. `sites`:
    node -> site of the targeted nodes (`node_sites`), for the agents' log records."""
    sets = build_edge_daemon_sets(
        ed, bundle_uri, targeted, settings, canary_ready=canary_ready, bundle_digest=bundle_digest
    )
    if not sets:
        return []
    config_map = spec_config_map(ed, agent_config_map_name(ed), "edge-agent")
    wanted = {n: s for n, s in sorted((sites or {}).items()) if n in targeted}
    config_map["data"][NODE_SITES_FILE] = json.dumps(wanted, sort_keys=True)
    return [config_map, *sets]
