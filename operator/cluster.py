"""The imperative shell: the only module that talks to the API server (through `Kube`: every
request with a timeout, a rate limit and retries).

Reads of watched kinds come from the watch caches (no request); what the operator writes goes
into the cache at once (the API's answer), so the next reconcile sees it. Children are made once
and re-applied (server-side apply, field manager `neuraxis`) only when they drifted: the
operator's annotation on a child records the digest of what it applied, and the child's
generation (or resourceVersion, for kinds without one) tells whether someone else changed it
since. A Job is only ever created (its pod template is immutable); only `suspend` follows the
spec."""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
import time
from typing import Any

from neuraxis import API_GROUP, API_VERSION
from neuraxis.operator.caches import TTLCache
from neuraxis.operator.informer import Informer
from neuraxis.operator.kube import (
    APPLY_PATCH,
    MERGE_PATCH,
    ApiError,
    Kube,
    RetryPolicy,
    current_kind,
    reconciling,
)
from neuraxis.operator.metrics import EVENTS_DROPPED

FIELD_MANAGER = "neuraxis"
CR_VERSION = f"{API_GROUP}/{API_VERSION}"
CLUSTER_SCOPED = frozenset({"Node", "Namespace", "ClusterRole", "ClusterRoleBinding"})
# Events are best effort: one retry, so that an unhealthy API server does not hold a reconcile.
EVENT_RETRY = RetryPolicy(attempts=2, base_s=0.2, cap_s=1.0)
# Optional APIs (Gateway API, prometheus-operator) may be installed later: looked up again.
FEATURE_TTL_S = 300.0
APPLIED_MAX = 50_000
# On each child: the digest of the manifest the operator last applied.
APPLIED_ANNOTATION = f"{API_GROUP}/applied"

Obj = dict[str, Any]
log = logging.getLogger("neuraxis.operator")


def _digest(manifest: Obj) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:20]


def _stamped(manifest: Obj, digest: str) -> Obj:
    meta = manifest["metadata"]
    annotations = {**(meta.get("annotations") or {}), APPLIED_ANNOTATION: digest}
    return {**manifest, "metadata": {**meta, "annotations": annotations}}


def _controller(obj: Obj) -> str | None:
    """The uid of the object's controlling owner."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return next((str(r.get("uid")) for r in refs if r.get("controller")), None)


def _revision(obj: Obj) -> str:
    """What changes when someone changes the object: its generation where it has one (status
    updates leave it alone), else its resourceVersion."""
    meta = obj.get("metadata") or {}
    generation = meta.get("generation")
    return f"g{generation}" if generation is not None else f"r{meta.get('resourceVersion')}"


def plural(kind: str) -> str:
    """The resource name of a kind: `s` appended, `y` after a consonant becoming `ies`
    (NetworkPolicy -> networkpolicies)."""
    name = kind.lower()
    if name.endswith("y") and name[-2:-1] not in ("a", "e", "i", "o", "u"):
        return f"{name[:-1]}ies"
    return f"{name}s"


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

    def __init__(
        self,
        kube: Kube,
        caches: dict[tuple[str, str], Informer] | None = None,
        events: EventSink | None = None,
    ):
        self.kube = kube
        self.caches = caches or {}
        self.events = events
        self._features: TTLCache[tuple[str, str], bool] = TTLCache(64, FEATURE_TTL_S)
        # Kinds without a watch cache: the digest last applied, so an unchanged one is not sent.
        self._applied: TTLCache[tuple[str, str, str, str], str] = TTLCache(APPLIED_MAX, 3600.0)
        # Watched children: their generation (or resourceVersion) after the operator's own
        # last write; a different one in the cache means someone else changed the object.
        self._written: TTLCache[tuple[str, str, str, str], str] = TTLCache(4 * APPLIED_MAX, 86400.0)

    def cache(self, api_version: str, kind: str) -> Informer | None:
        return self.caches.get((api_version, kind))

    def _observe(self, obj: Obj | None, api_version: str, kind: str) -> None:
        informer = self.cache(api_version, kind)
        if obj and informer is not None:
            informer.observe(obj)

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
        """From the watch cache when the kind has one (do not change the returned dict)."""
        informer = self.cache(api_version, kind)
        if informer is not None and informer.covers(namespace):
            return informer.get(namespace, name)
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
        informer = self.cache(api_version, kind)
        if informer is not None and (namespace is None or informer.covers(namespace)):
            return informer.list(namespace, labels)
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

    def ensure(self, manifest: Obj) -> None:
        """Make the child exist as built: created when missing, re-applied when the operator's
        manifest changed or someone else changed the object (see the module doc)."""
        informer = self.cache(manifest["apiVersion"], manifest["kind"])
        if informer is None:
            self.apply(manifest)
            return
        meta = manifest["metadata"]
        cached = informer.get(meta.get("namespace"), meta["name"])
        if manifest["kind"] == "Job":  # made once: no digest to keep
            if cached is None:
                self.create(manifest)
            elif bool((manifest["spec"]).get("suspend")) != bool(cached["spec"].get("suspend")):
                self._patch(manifest, {"spec": {"suspend": bool(manifest["spec"].get("suspend"))}})
            return
        key = self._key(manifest)
        digest = _digest(manifest)
        if cached is not None:
            if _controller(cached) not in (None, _controller(manifest)):
                # Another resource's child under the same name (a Service two versions of a
                # model share, or what a deleted resource left for the garbage collector):
                # not ours to fight over; its deletion brings ours.
                return
            stamp = ((cached.get("metadata") or {}).get("annotations") or {}).get(
                APPLIED_ANNOTATION
            )
            written = self._written.get(key)
            if stamp == digest and written in (None, _revision(cached)):
                if written is None:  # first look since start-up: this is the baseline
                    self._written.put(key, _revision(cached))
                return
        applied = self._server_side_apply(_stamped(manifest, digest))
        self._written.put(key, _revision(applied))

    def _server_side_apply(self, manifest: Obj) -> Obj:
        meta = manifest["metadata"]
        applied = self.kube.request(
            "PATCH",
            api_path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"), meta["name"]),
            query={"fieldManager": FIELD_MANAGER, "force": True},
            body=manifest,
            content_type=APPLY_PATCH,
        )
        self._observe(applied, manifest["apiVersion"], manifest["kind"])
        return applied

    def _patch(self, manifest: Obj, patch: Obj) -> None:
        meta = manifest["metadata"]
        patched = self.kube.request(
            "PATCH",
            api_path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"), meta["name"]),
            body=patch,
            content_type=MERGE_PATCH,
        )
        self._observe(patched, manifest["apiVersion"], manifest["kind"])

    def apply(self, manifest: Obj) -> Obj | None:
        """Server-side apply, skipped (None) when this exact manifest was applied recently."""
        key = self._key(manifest)
        digest = _digest(manifest)
        if self._applied.get(key) == digest:
            return None
        applied = self._server_side_apply(manifest)
        self._applied.put(key, digest)
        return applied

    def forget(self, obj: Obj | None = None) -> None:
        """Drop what is remembered of one object (it was deleted) or of all."""
        if obj is None:
            self._applied.clear()
            self._written.clear()
        else:
            self._applied.pop(self._key(obj))
            self._written.pop(self._key(obj))

    def create(self, manifest: Obj) -> Obj | None:
        """Create, or return None when an object of that name already exists."""
        meta = manifest["metadata"]
        path = api_path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"))
        try:
            created = self.kube.request("POST", path, body=manifest)
        except ApiError as exc:
            if exc.status == 409:
                return None
            raise
        self._observe(created, manifest["apiVersion"], manifest["kind"])
        return created

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
            gone = self.kube.request(
                "DELETE",
                api_path(api_version, kind, namespace, name),
                body={"propagationPolicy": propagation},
            )
        except ApiError as exc:
            if exc.status != 404:
                raise
            return
        if (gone.get("metadata") or {}).get("deletionTimestamp"):
            self._observe(gone, api_version, kind)  # still there, being deleted

    def patch_status(
        self,
        kind: str,
        namespace: str,
        name: str,
        status: Obj,
        retry: RetryPolicy | None = None,
        resource_version: str | None = None,
    ) -> Obj:
        """Merge `status` in. With `resource_version` (of the object the status was computed
        from) the write applies only to that version: a status computed from a stale cache (a
        new leader's, say) gets 409 Conflict instead of overwriting a newer one."""
        body: Obj = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        patched = self.kube.request(
            "PATCH",
            api_path(CR_VERSION, kind, namespace, name, "status"),
            body=body,
            content_type=MERGE_PATCH,
            retry=retry,
        )
        self._observe(patched, CR_VERSION, kind)
        return patched

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
        if self.events is not None:
            self.events.put(body)
        else:
            post_event(self.kube, body)


def post_event(kube: Kube, body: Obj) -> None:
    try:
        kube.request(
            "POST",
            api_path("events.k8s.io/v1", "Event", body["metadata"]["namespace"]),
            body=body,
            retry=EVENT_RETRY,
        )
    except ApiError as exc:
        name = body["regarding"]["name"]
        log.warning("could not record Event %s on %s: %s", body["reason"], name, exc.short())


class EventSink:
    """Events are posted by threads of their own, so a reconcile does not wait for them (one
    write fewer on its path). Bounded: when the API server cannot keep up, new Events are
    dropped (counted) rather than held without limit."""

    def __init__(self, kube: Kube, threads: int = 2, maxsize: int = 10_000):
        self.kube = kube
        self._queue: queue.Queue[tuple[str, Obj]] = queue.Queue(maxsize)
        for index in range(threads):
            threading.Thread(target=self._post, name=f"events-{index}", daemon=True).start()

    def put(self, body: Obj) -> None:
        try:
            self._queue.put_nowait((current_kind(), body))
        except queue.Full:
            EVENTS_DROPPED.inc()

    def _post(self) -> None:
        while True:
            kind, body = self._queue.get()
            with reconciling(kind):  # counted with the kind that asked for it
                post_event(self.kube, body)

    def drain(self, timeout: float = 5.0) -> None:
        """Wait (a while) for the queued Events, e.g. before the process exits."""
        deadline = time.monotonic() + timeout
        while not self._queue.empty() and time.monotonic() < deadline:
            time.sleep(0.05)
