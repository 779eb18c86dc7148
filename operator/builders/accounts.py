"""Accounts the workload pods run as. They are per namespace and shared by every resource in it,
so they have no owner; the operator ensures them before it creates pods that name them.

Spark on Kubernetes: the driver pod creates its executor pods, so it runs as an account with
an API token and a RoleBinding to the `neuraxis-spark-driver` ClusterRole (shipped with the
operator's manifests). A RoleBinding to a shipped ClusterRole, rather than a Role the operator
writes, keeps the operator's own rights narrow: writing a Role that grants pod create/delete
would need those rights itself (RBAC refuses escalation), binding needs only `bind` on that one
ClusterRole."""

from __future__ import annotations

from typing import Any

from neuraxis.crds import Dataset, ModelVersion, Resource
from neuraxis.operator.children import MANAGED_BY
from neuraxis.operator.settings import OperatorSettings

RBAC_VERSION = "rbac.authorization.k8s.io/v1"
SPARK_DRIVER_ROLE = "neuraxis-spark-driver"
# Predictors checking ServiceAccount tokens run as this account (one per namespace).
PREDICTOR_ACCOUNT = "neuraxis-predictor"
# Kubernetes' built-in role for delegated authentication (TokenReview, SubjectAccessReview).
AUTH_DELEGATOR_ROLE = "system:auth-delegator"
_MANAGE = ["get", "list", "watch", "create", "patch", "delete", "deletecollection"]


def spark_driver_rules() -> list[dict[str, Any]]:
    """What a Spark driver in client mode does: create, watch and delete its executor pods,
    the executors' ConfigMap and (in cluster mode) its own Service. No PVCs, no Secrets."""
    return [
        {"apiGroups": [""], "resources": ["pods"], "verbs": list(_MANAGE)},
        {"apiGroups": [""], "resources": ["configmaps", "services"], "verbs": list(_MANAGE)},
    ]


def spark_driver_cluster_role(labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": RBAC_VERSION,
        "kind": "ClusterRole",
        "metadata": {"name": SPARK_DRIVER_ROLE, "labels": labels or {MANAGED_BY: "neuraxis"}},
        "rules": spark_driver_rules(),
    }


def _account(name: str, namespace: str, *, token: bool = False) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": namespace, "labels": {MANAGED_BY: "neuraxis"}},
        "automountServiceAccountToken": token,
    }


def workload_account(namespace: str, settings: OperatorSettings) -> dict[str, Any]:
    """Workload pods call no Kubernetes API: no token."""
    return _account(settings.service_account, namespace)


def spark_accounts(namespace: str, settings: OperatorSettings) -> list[dict[str, Any]]:
    """The driver's account and its RoleBinding. The account itself mounts no token: the driver
    pod asks for one, and executor pods (which Spark starts under the same account) get none."""
    name = settings.spark_service_account
    binding = {
        "apiVersion": RBAC_VERSION,
        "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": namespace, "labels": {MANAGED_BY: "neuraxis"}},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": SPARK_DRIVER_ROLE,
        },
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
    }
    return [_account(name, namespace), binding]


def predictor_accounts(namespace: str) -> list[dict[str, Any]]:
    """The account of predictors that check ServiceAccount tokens, and its ClusterRoleBinding
    to `system:auth-delegator` (create tokenreviews and subjectaccessreviews: TokenReview is
    cluster-scoped, so a RoleBinding cannot grant it). The account mounts no token; the
    predictor pod asks for one."""
    binding = {
        "apiVersion": RBAC_VERSION,
        "kind": "ClusterRoleBinding",
        "metadata": {
            "name": f"{PREDICTOR_ACCOUNT}-{namespace}",
            "labels": {MANAGED_BY: "neuraxis"},
        },
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": AUTH_DELEGATOR_ROLE,
        },
        "subjects": [{"kind": "ServiceAccount", "name": PREDICTOR_ACCOUNT, "namespace": namespace}],
    }
    return [_account(PREDICTOR_ACCOUNT, namespace), binding]


def reviews_tokens(res: Resource) -> bool:
    serving = res.spec.serving if isinstance(res, ModelVersion) else None
    return (
        serving is not None
        and serving.auth is not None
        and (serving.auth.mode == "serviceAccountToken")
    )


def accounts_for(res: Resource, settings: OperatorSettings) -> list[dict[str, Any]]:
    """The namespace's accounts (and bindings) the resource's pods run as."""
    namespace = res.metadata.namespace or "default"
    accounts = [workload_account(namespace, settings)]
    if isinstance(res, Dataset) and res.spec.engine.executors > 0:
        accounts += spark_accounts(namespace, settings)
    if reviews_tokens(res):
        accounts += predictor_accounts(namespace)
    return accounts
