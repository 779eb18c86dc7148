"""The operator's deployment manifests, generated from code (`neuraxis operator manifests`):
service accounts, a least-privilege ClusterRole (exact resources and verbs, no wildcards, no
Secret access), its binding, the ClusterRole Spark drivers are bound to, and a hardened
Deployment. `operator/deploy/` holds the same
output as a kustomize directory; a test fails when it drifts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from neuraxis import API_GROUP, __version__
from neuraxis.crds.kinds import KINDS
from neuraxis.operator.builders.accounts import (
    AUTH_DELEGATOR_ROLE,
    SPARK_DRIVER_ROLE,
    spark_driver_cluster_role,
)
from neuraxis.operator.pods import security_context
from neuraxis.operator.settings import DEFAULT_IMAGE, OperatorSettings

NAMESPACE = "neuraxis-system"
OPERATOR = "neuraxis-operator"
WORKLOAD_SA = "neuraxis-workload"
LAKE_SECRET = OperatorSettings().lake_secret
LABELS = {"app.kubernetes.io/name": "neuraxis", "app.kubernetes.io/component": "operator"}
WRITE = ["get", "list", "watch", "create", "patch"]
READ = ["get", "list", "watch"]
RBAC = "rbac.authorization.k8s.io"
REPLICAS = 2


def _rule(
    group: str, resources: list[str], verbs: list[str], names: list[str] | None = None
) -> dict[str, Any]:
    rule: dict[str, Any] = {"apiGroups": [group], "resources": sorted(resources), "verbs": verbs}
    if names:
        rule["resourceNames"] = names
    return rule


def cluster_role_rules() -> list[dict[str, Any]]:
    plurals = sorted(i.plural for i in KINDS.values())
    return [
        # The four kinds: read them, create registered ModelVersions, write status.
        _rule(API_GROUP, plurals, ["get", "list", "watch", "create", "patch", "update"]),
        _rule(API_GROUP, [f"{p}/status" for p in plurals], ["get", "patch", "update"]),
        _rule("batch", ["cronjobs"], WRITE),
        # A new run first deletes the unfinished Job of the run it supersedes (the garbage
        # collector deletes its pods: the operator needs no pod rights for that).
        _rule("batch", ["jobs"], [*WRITE, "delete"]),
        _rule("", ["pods"], READ),
        _rule("", ["services", "configmaps"], WRITE),
        # Scoped lake credentials (NEURAXIS_LAKE_CREDENTIALS=scoped): one Secret per run and
        # role, written (server-side apply) by the operator; and a federated run's TLS Secret
        # (the SuperLink's certificate and key). Never read back, listed or deleted: the
        # garbage collector deletes them with their owners.
        _rule("", ["secrets"], ["create", "patch"]),
        # The workload accounts per namespace (watched: a deleted one is made again).
        _rule("", ["serviceaccounts"], ["get", "list", "watch", "create"]),
        # The Spark driver's RoleBinding: `bind` on that one ClusterRole only, so the operator
        # can grant executor-pod rights without holding them (RBAC checks escalation).
        _rule(RBAC, ["rolebindings"], ["get", "list", "watch", "create"]),
        _rule(RBAC, ["clusterroles"], ["get", "bind"], [SPARK_DRIVER_ROLE, AUTH_DELEGATOR_ROLE]),
        # Predictors checking ServiceAccount tokens: their account's binding to
        # system:auth-delegator (TokenReview is cluster-scoped).
        _rule(RBAC, ["clusterrolebindings"], ["get", "list", "watch", "create"]),
        _rule("", ["nodes", "namespaces"], READ),
        _rule("apps", ["daemonsets"], WRITE),
        # A finished or superseded federated run's SuperLink and SuperNodes (Deployments) and
        # their NetworkPolicies are deleted: they would otherwise keep serving nobody.
        _rule("apps", ["deployments"], [*WRITE, "delete"]),
        _rule("networking.k8s.io", ["networkpolicies"], [*WRITE, "delete"]),
        _rule("autoscaling", ["horizontalpodautoscalers"], WRITE),
        _rule("events.k8s.io", ["events"], ["create", "patch"]),
        # Optional integrations, used only where their CRDs exist.
        _rule("gateway.networking.k8s.io", ["httproutes"], WRITE),
        _rule("monitoring.coreos.com", ["servicemonitors"], WRITE),
        _rule("apiextensions.k8s.io", ["customresourcedefinitions"], READ),
    ]


def build_manifests(image: str = DEFAULT_IMAGE, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    meta = {"namespace": namespace, "labels": LABELS}
    container = {
        "name": "operator",
        "image": image,
        "args": ["operator", "--all-namespaces", "--json-logs"],
        "env": [
            {"name": "NEURAXIS_IMAGE", "value": image},
            {"name": "NEURAXIS_WORKLOAD_SERVICE_ACCOUNT", "value": WORKLOAD_SA},
            # Two replicas: the holder of the Lease reconciles, the other stands by (warm
            # caches) and takes over when the lease is not renewed for 15 s.
            {"name": "NEURAXIS_LEADER_ELECTION", "value": "true"},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {
                "name": "POD_NAMESPACE",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
            },
        ],
        # The lake keys are the operator's: it mints narrower ones for each run from them
        # (scoped mode). Optional: with IRSA or shared mode there may be none.
        "envFrom": [{"secretRef": {"name": LAKE_SECRET, "optional": True}}],
        "ports": [
            {"name": "metrics", "containerPort": 9090},
            {"name": "health", "containerPort": 8080},
        ],
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "health"}, "periodSeconds": 10},
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "health"}, "periodSeconds": 10},
        "resources": {
            "requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"cpu": "1", "memory": "512Mi"},
        },
        "securityContext": security_context(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    return [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": namespace, "labels": LABELS},
        },
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": OPERATOR, **meta}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": WORKLOAD_SA, **meta}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": OPERATOR, "labels": LABELS},
            "rules": cluster_role_rules(),
        },
        spark_driver_cluster_role({**LABELS, "app.kubernetes.io/component": "spark-driver"}),
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": f"{OPERATOR}-leader", **meta},
            "rules": lease_rules(),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": f"{OPERATOR}-leader", **meta},
            "roleRef": {"apiGroup": RBAC, "kind": "Role", "name": f"{OPERATOR}-leader"},
            "subjects": [{"kind": "ServiceAccount", "name": OPERATOR, "namespace": namespace}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": OPERATOR, "labels": LABELS},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": OPERATOR,
            },
            "subjects": [{"kind": "ServiceAccount", "name": OPERATOR, "namespace": namespace}],
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": OPERATOR, **meta},
            "spec": {
                "replicas": REPLICAS,
                # One replica reconciles at a time (the Lease), so a rolling update is safe.
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
                },
                "selector": {"matchLabels": LABELS},
                "template": {
                    "metadata": {"labels": {**LABELS, "app.kubernetes.io/version": __version__}},
                    "spec": {
                        "serviceAccountName": OPERATOR,
                        "securityContext": {
                            "runAsNonRoot": True,
                            "runAsUser": 10001,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "containers": [container],
                        "volumes": [{"name": "tmp", "emptyDir": {}}],
                        "affinity": spread_over_nodes(),
                    },
                },
            },
        },
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": OPERATOR, **meta},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": LABELS}},
        },
    ]


def spread_over_nodes() -> dict[str, Any]:
    """Replicas on different nodes when possible: a node going away leaves a standby."""
    term = {"labelSelector": {"matchLabels": LABELS}, "topologyKey": "kubernetes.io/hostname"}
    return {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "podAffinityTerm": term}
            ]
        }
    }


def lease_rules() -> list[dict[str, Any]]:
    """The leader Lease, in the operator's own namespace only (a Role, not the ClusterRole)."""
    return [_rule("coordination.k8s.io", ["leases"], ["get", "create", "update"])]


FILES = {
    "namespace.yaml": ("Namespace",),
    "rbac.yaml": ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"),
    "deployment.yaml": ("Deployment", "PodDisruptionBudget"),
}
HEADER = "# Generated by `neuraxis operator manifests --out operator/deploy`. Do not edit.\n"


def render_deploy_dir(image: str = DEFAULT_IMAGE) -> dict[str, str]:
    manifests = build_manifests(image)
    out = {}
    for name, kinds in FILES.items():
        docs = [m for m in manifests if m["kind"] in kinds]
        out[name] = HEADER + yaml.safe_dump_all(docs, sort_keys=False)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["../../crds", *FILES],
    }
    out["kustomization.yaml"] = HEADER + yaml.safe_dump(kustomization, sort_keys=False)
    return out


def write_deploy_dir(out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in render_deploy_dir().items():
        (out / name).write_text(content)
        written.append(out / name)
    return written
