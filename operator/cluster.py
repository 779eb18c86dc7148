"""The imperative shell: the only module that talks to the API server. Children are written
with server-side apply (field manager `neuraxis`), so re-applying restores edited fields and
is a no-op when nothing changed."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
from typing import Any

from kubernetes import client as k8s
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError, ResourceNotFoundError

from neuraxis import API_GROUP, API_VERSION
from neuraxis.operator.metrics import API_REQUESTS

FIELD_MANAGER = "neuraxis"
CR_VERSION = f"{API_GROUP}/{API_VERSION}"

Obj = dict[str, Any]
log = logging.getLogger("neuraxis.operator")


class Cluster:
    """Typed access to the few operations the reconcilers need."""

    def __init__(self, api_client: k8s.ApiClient):
        self.api_client = api_client
        self.dynamic = DynamicClient(api_client)  # type: ignore[no-untyped-call]
        self._features: dict[tuple[str, str], bool] = {}
        self._applied: dict[tuple[str, str, str, str], str] = {}
        self._lock = threading.Lock()

    def _resource(self, api_version: str, kind: str) -> Any:
        return self.dynamic.resources.get(api_version=api_version, kind=kind)

    def has_kind(self, api_version: str, kind: str) -> bool:
        """Whether the cluster serves a kind (an optional CRD such as HTTPRoute), cached."""
        key = (api_version, kind)
        with self._lock:
            if key not in self._features:
                try:
                    self._resource(api_version, kind)
                    self._features[key] = True
                except ResourceNotFoundError:
                    self._features[key] = False
            return self._features[key]

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> Obj | None:
        API_REQUESTS.labels(verb="get").inc()
        try:
            found = self._resource(api_version, kind).get(name=name, namespace=namespace)
        except NotFoundError:
            return None
        return dict(found.to_dict())

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        labels: dict[str, str] | None = None,
    ) -> list[Obj]:
        API_REQUESTS.labels(verb="list").inc()
        selector = ",".join(f"{k}={v}" for k, v in sorted((labels or {}).items())) or None
        items = self._resource(api_version, kind).get(namespace=namespace, label_selector=selector)
        return [dict(i.to_dict()) for i in items.items]

    @staticmethod
    def _key(obj: Obj) -> tuple[str, str, str, str]:
        meta = obj.get("metadata") or {}
        return (obj["apiVersion"], obj["kind"], meta.get("namespace") or "", meta["name"])

    def apply(self, manifest: Obj) -> None:
        """Server-side apply, skipped when this exact manifest was applied since the object was
        last seen deleted and the last resync (which forgets everything, so edits made by others
        are restored within one resync period)."""
        key = self._key(manifest)
        digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
        with self._lock:
            if self._applied.get(key) == digest:
                return
        API_REQUESTS.labels(verb="apply").inc()
        resource = self._resource(manifest["apiVersion"], manifest["kind"])
        resource.server_side_apply(
            body=manifest,
            name=manifest["metadata"]["name"],
            namespace=manifest["metadata"].get("namespace"),
            field_manager=FIELD_MANAGER,
            force_conflicts=True,
        )
        with self._lock:
            self._applied[key] = digest

    def forget(self, obj: Obj | None = None) -> None:
        """Drop the apply cache for one object (it was deleted) or for all (resync)."""
        with self._lock:
            if obj is None:
                self._applied.clear()
            else:
                self._applied.pop(self._key(obj), None)

    def create(self, manifest: Obj) -> Obj | None:
        """Create, or return None when an object of that name already exists."""
        API_REQUESTS.labels(verb="create").inc()
        resource = self._resource(manifest["apiVersion"], manifest["kind"])
        try:
            created = resource.create(
                body=manifest, namespace=manifest["metadata"].get("namespace")
            )
        except k8s.exceptions.ApiException as exc:
            if exc.status == 409:
                return None
            raise
        return dict(created.to_dict())

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
        API_REQUESTS.labels(verb="delete").inc()
        with contextlib.suppress(NotFoundError):
            self._resource(api_version, kind).delete(
                name=name, namespace=namespace, body={"propagationPolicy": propagation}
            )

    def patch_status(self, kind: str, namespace: str, name: str, status: Obj) -> None:
        API_REQUESTS.labels(verb="patch-status").inc()
        self._resource(CR_VERSION, kind).status.patch(
            body={"status": status},
            name=name,
            namespace=namespace,
            content_type="application/merge-patch+json",
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
            API_REQUESTS.labels(verb="event").inc()
            self._resource("events.k8s.io/v1", "Event").create(
                body=body, namespace=meta["namespace"]
            )
        except k8s.exceptions.ApiException as exc:
            log.warning("could not record Event %s on %s: %s", reason, meta["name"], exc.reason)
