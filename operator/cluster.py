"""The imperative shell: the only module that talks to the API server (through `Kube`: every
request with a timeout, a rate limit and retries). Children are written with server-side apply
(field manager `neuraxis`), so re-applying restores edited fields and is a no-op when nothing
changed."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from neuraxis import API_GROUP, API_VERSION
from neuraxis.operator.caches import TTLCache
from neuraxis.operator.kube import APPLY_PATCH, MERGE_PATCH, ApiError, Kube, RetryPolicy

FIELD_MANAGER = "neuraxis"
CR_VERSION = f"{API_GROUP}/{API_VERSION}"
CLUSTER_SCOPED = frozenset({"Node", "Namespace", "ClusterRole", "ClusterRoleBinding"})
# Events are best effort: one retry, so that an unhealthy API server does not hold a reconcile.
EVENT_RETRY = RetryPolicy(attempts=2, base_s=0.2, cap_s=1.0)
# Optional APIs (Gateway API, prometheus-operator) may be installed later: looked up again.
FEATURE_TTL_S = 300.0
APPLIED_MAX = 50_000

Obj = dict[str, Any]
log = logging.getLogger("neuraxis.operator")


def plural(kind: str) -> str:
    """The resource name of a kind (all the kinds used here form it regularly)."""
    return f"{kind.lower()}s"


def api_path(
    api_version: str,
    kind: str,
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    """`/api/v1/namespaces/ml/pods/x`, `/apis/batch/v1/namespaces/ml/jobs`, ..."""
    parts = ["/api/v1" if api_version == "v1" else f"/apis/{api_version}"]
    if namespace and kind not in CLUSTER_SCOPED:
        parts.append(f"namespaces/{namespace}")
    parts.append(plural(kind))
    if name:
        parts.append(name)
    if subresource:
        parts.append(subresource)
    return "/".join(parts)


class Cluster:
    """Typed access to the few operations the reconcilers need."""

    def __init__(self, kube: Kube):
        self.kube = kube
        self._features: TTLCache[tuple[str, str], bool] = TTLCache(64, FEATURE_TTL_S)
        # What was last applied per object (a digest), so an unchanged child is not re-sent.
        self._applied: TTLCache[tuple[str, str, str, str], str] = TTLCache(APPLIED_MAX, 3600.0)

    def has_kind(self, api_version: str, kind: str) -> bool:
        """Whether the cluster serves a kind (an optional CRD such as HTTPRoute), cached."""
        key = (api_version, kind)
        known = self._features.get(key)
        if known is None:
            try:
                found = self.kube.request("GET", f"/apis/{api_version}", verb="discover")
                known = any(r.get("kind") == kind for r in found.get("resources") or [])
            except ApiError as exc:
                if exc.status != 404:
                    raise
                known = False
            self._features.put(key, known)
        return known

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> Obj | None:
        try:
            return self.kube.request("GET", api_path(api_version, kind, namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        labels: dict[str, str] | None = None,
    ) -> list[Obj]:
        selector = ",".join(f"{k}={v}" for k, v in sorted((labels or {}).items())) or None
        items: list[Obj] = []
        token = None
        while True:
            page = self.kube.request(
                "GET",
                api_path(api_version, kind, namespace),
                query={"labelSelector": selector, "limit": 500, "continue": token},
                verb="list",
            )
            for item in page.get("items") or []:
                items.append({"apiVersion": api_version, "kind": kind, **item})
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items

    @staticmethod
    def _key(obj: Obj) -> tuple[str, str, str, str]:
        meta = obj.get("metadata") or {}
        return (obj["apiVersion"], obj["kind"], meta.get("namespace") or "", meta["name"])

    def apply(self, manifest: Obj) -> Obj | None:
        """Server-side apply, skipped (None) when this exact manifest was applied since the
        object was last seen deleted and the last resync."""
        key = self._key(manifest)
        digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
        if self._applied.get(key) == digest:
            return None
        meta = manifest["metadata"]
        applied = self.kube.request(
            "PATCH",
            api_path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"), meta["name"]),
            query={"fieldManager": FIELD_MANAGER, "force": True},
            body=manifest,
            content_type=APPLY_PATCH,
        )
        self._applied.put(key, digest)
        return applied

    def forget(self, obj: Obj | None = None) -> None:
        """Drop the apply cache for one object (it was deleted) or for all (resync)."""
        if obj is None:
            self._applied.clear()
        else:
            self._applied.pop(self._key(obj))

    def create(self, manifest: Obj) -> Obj | None:
        """Create, or return None when an object of that name already exists."""
        meta = manifest["metadata"]
        path = api_path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"))
        try:
            return self.kube.request("POST", path, body=manifest)
        except ApiError as exc:
            if exc.status == 409:
                return None
            raise

    def delete(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        propagation: str = "Foreground",
    ) -> None:
        """Delete an object; with Foreground propagation it stays (with a deletionTimestamp)
        until its dependents are gone. Already gone is fine."""
        try:
            self.kube.request(
                "DELETE",
                api_path(api_version, kind, namespace, name),
                body={"propagationPolicy": propagation},
            )
        except ApiError as exc:
            if exc.status != 404:
                raise

    def patch_status(
        self,
        kind: str,
        namespace: str,
        name: str,
        status: Obj,
        retry: RetryPolicy | None = None,
    ) -> Obj:
        return self.kube.request(
            "PATCH",
            api_path(CR_VERSION, kind, namespace, name, "status"),
            body={"status": status},
            content_type=MERGE_PATCH,
            retry=retry,
        )

    def event(self, obj: Obj, type_: str, reason: str, message: str) -> None:
        """Record an Event on `obj` (best effort: an Event must never fail a reconcile)."""
        from neuraxis.workloads.result import now_rfc3339

        meta = obj["metadata"]
        body = {
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}-", "namespace": meta["namespace"]},
            "eventTime": now_rfc3339().replace("Z", ".000000Z"),
            "reportingController": "neuraxis.dev/operator",
            "reportingInstance": "neuraxis-operator",
            "action": "Reconcile",
            "type": type_,
            "reason": reason,
            "note": message[:1024],
            "regarding": {
                "apiVersion": obj["apiVersion"],
                "kind": obj["kind"],
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
        }
        try:
            self.kube.request(
                "POST",
                api_path("events.k8s.io/v1", "Event", meta["namespace"]),
                body=body,
                retry=EVENT_RETRY,
            )
        except ApiError as exc:
            log.warning("could not record Event %s on %s: %s", reason, meta["name"], exc.short())
