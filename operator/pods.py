"""Pod templates for workload children: one image, the resource's spec mounted from a
ConfigMap, lake settings from the environment, a hardened security context."""

from __future__ import annotations

from typing import Any

from neuraxis.crds import Resource
from neuraxis.operator.children import SPEC_MOUNT, pod_annotations, standard_labels
from neuraxis.operator.settings import OperatorSettings

WORKLOAD_UID = 10001


def security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def resource_limits(cpu: str, memory: str, gpus: int = 0) -> dict[str, Any]:
    amounts: dict[str, Any] = {"cpu": cpu, "memory": memory}
    limits = dict(amounts)
    if gpus:
        limits["nvidia.com/gpu"] = gpus
    return {"requests": amounts, "limits": limits}


def workload_container(
    res: Resource,
    settings: OperatorSettings,
    command: list[str],
    *,
    resources: dict[str, Any],
    env: dict[str, str] | None = None,
    extra_env: list[dict[str, Any]] | None = None,
    ports: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    base_env = {
        "NEURAXIS_LAKE_URI": settings.lake_uri,
        "NEURAXIS_NAMESPACE": res.metadata.namespace or "default",
        "NEURAXIS_HOME": "/tmp/neuraxis",
        "HOME": "/tmp",
        **(env or {}),
    }
    container: dict[str, Any] = {
        "name": "main",
        "image": settings.image,
        "command": command,
        "env": [{"name": k, "value": v} for k, v in sorted(base_env.items())] + (extra_env or []),
        "envFrom": [{"secretRef": {"name": settings.lake_secret, "optional": True}}],
        "resources": resources,
        "securityContext": security_context(),
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": "spec", "mountPath": SPEC_MOUNT, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    if ports:
        container["ports"] = ports
    return container


def workload_scheduling(settings: OperatorSettings, own: dict[str, Any] | None) -> dict[str, Any]:
    """A kind's own scheduling (GPU pool, edge nodes) plus the platform-wide tolerations and
    node selector every workload pod gets (NEURAXIS_WORKLOAD_TOLERATIONS / _NODE_SELECTOR)."""
    out = dict(own or {})
    tolerations = list(out.get("tolerations") or [])
    tolerations += [t for t in settings.workload_tolerations if t not in tolerations]
    if tolerations:
        out["tolerations"] = tolerations
    selector = dict(settings.workload_node_selector)
    for key, value in (out.get("nodeSelector") or {}).items():
        if selector.get(key, value) != value:
            # Settings validation keeps the platform selector off the kinds' own labels.
            raise ValueError(f"nodeSelector {key}: {value!r} conflicts with the platform's")
        selector[key] = value
    if selector:
        out["nodeSelector"] = selector
    return out


def pod_template(
    res: Resource,
    settings: OperatorSettings,
    component: str,
    container: dict[str, Any],
    spec_config_map: str,
    *,
    labels: dict[str, str] | None = None,
    restart_policy: str = "Never",
    scheduling: dict[str, Any] | None = None,
    service_account: str | None = None,
    api_token: bool = False,
) -> dict[str, Any]:
    """`service_account` defaults to the workload account; `api_token` mounts its token (only
    pods that call the API server, such as a Spark driver, get one)."""
    return {
        "metadata": {
            "labels": {**standard_labels(res, component), **(labels or {})},
            "annotations": pod_annotations(res, allow_kwok=settings.allow_kwok_annotations),
        },
        "spec": {
            "restartPolicy": restart_policy,
            "serviceAccountName": service_account or settings.service_account,
            "automountServiceAccountToken": api_token,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": WORKLOAD_UID,
                "fsGroup": WORKLOAD_UID,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [container],
            "volumes": [
                {"name": "spec", "configMap": {"name": spec_config_map}},
                {"name": "tmp", "emptyDir": {}},
            ],
            **workload_scheduling(settings, scheduling),
        },
    }
