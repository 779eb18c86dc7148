"""Kubernetes manifests (plain dicts, as the operator and the prometheus-operator module give
them) as typed Pulumi resources, one resource per object, so every object shows in previews,
diffs, policies and mock tests.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

Manifest = Mapping[str, Any]

# Top-level fields of an object that are neither apiVersion/kind nor server-written.
_SKIP = {"apiVersion", "kind", "status"}
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def _classes() -> dict[tuple[str, str], Any]:
    return {
        ("v1", "Namespace"): k8s.core.v1.Namespace,
        ("v1", "ServiceAccount"): k8s.core.v1.ServiceAccount,
        ("v1", "Secret"): k8s.core.v1.Secret,
        ("v1", "ConfigMap"): k8s.core.v1.ConfigMap,
        ("v1", "Service"): k8s.core.v1.Service,
        ("v1", "PersistentVolume"): k8s.core.v1.PersistentVolume,
        ("v1", "PersistentVolumeClaim"): k8s.core.v1.PersistentVolumeClaim,
        ("apps/v1", "Deployment"): k8s.apps.v1.Deployment,
        ("apps/v1", "DaemonSet"): k8s.apps.v1.DaemonSet,
        ("rbac.authorization.k8s.io/v1", "ClusterRole"): k8s.rbac.v1.ClusterRole,
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): k8s.rbac.v1.ClusterRoleBinding,
        ("rbac.authorization.k8s.io/v1", "Role"): k8s.rbac.v1.Role,
        ("rbac.authorization.k8s.io/v1", "RoleBinding"): k8s.rbac.v1.RoleBinding,
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition"): (
            k8s.apiextensions.v1.CustomResourceDefinition
        ),
    }


def resource_name(manifest: Manifest) -> str:
    """A stable, unique Pulumi name: `<kind>-<namespace>-<name>` (namespaced) or `<kind>-<name>`."""
    meta = manifest.get("metadata") or {}
    name = meta.get("name")
    if not name:
        raise ValueError(f"{manifest.get('kind', '?')}: metadata.name is required")
    parts = [str(manifest["kind"]).lower(), meta.get("namespace"), name]
    return "-".join(str(p) for p in parts if p)


def snake(key: str) -> str:
    return _CAMEL.sub("_", key).lower()


def kube_object(manifest: Manifest, opts: pulumi.ResourceOptions) -> pulumi.CustomResource:
    """One Pulumi resource for one object; custom kinds become `apiextensions.CustomResource`.

    Nested fields stay camelCase (the provider's wire format); only the top-level keyword
    arguments are Python names.
    """
    body = {snake(k): v for k, v in manifest.items() if k not in _SKIP}
    api_version, kind = str(manifest["apiVersion"]), str(manifest["kind"])
    cls = _classes().get((api_version, kind))
    name = resource_name(manifest)
    if cls is None:
        return k8s.apiextensions.CustomResource(
            name, api_version=api_version, kind=kind, opts=opts, **body
        )
    resource: pulumi.CustomResource = cls(name, opts=opts, **body)
    return resource


def kube_objects(
    manifests: Sequence[Manifest], opts: pulumi.ResourceOptions
) -> list[pulumi.CustomResource]:
    """Objects in dependency order: Namespaces and CRDs first, everything else after them."""
    first = [m for m in manifests if m["kind"] in ("Namespace", "CustomResourceDefinition")]
    created = [kube_object(m, opts) for m in first]
    rest_opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=created))
    created += [kube_object(m, rest_opts) for m in manifests if m not in first]
    return created
