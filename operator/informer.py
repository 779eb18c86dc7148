"""Watch caches: an Informer keeps an in-memory copy of one kind of object (per watched
namespace, optionally filtered by labels), fed by a list and then a watch from the list's
resourceVersion (bookmarks on; on `410 Gone` or a broken watch it lists again and reports the
differences as events). Reads come from here, so a steady-state reconcile sends no GET or LIST.

Objects are trimmed to what the reconcilers read (a Job without its pod template, a Pod with
only its labels, phase and termination messages, ...): memory grows with the number of objects,
not with their size. Stored objects are never changed in place (a new version replaces the old
one), so a reader may keep the dict it got."""

from __future__ import annotations

import builtins
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from neuraxis import API_GROUP
from neuraxis.operator.canary import KWOK_METRICS_URL
from neuraxis.operator.kube import ApiError, Kube

log = logging.getLogger("neuraxis.operator")
Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped objects
Handler = Callable[[str, Obj | None, Obj | None], None]  # event type, old, new

WATCH_TIMEOUT_S = 290  # server side; the read timeout adds a margin (bookmarks arrive ~1/min)
RELIST_BACKOFF_S = (0.5, 30.0)
# Metadata the reconcilers never read, and that can be large.
DROPPED_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)
OWNER_PREFIX = f"{API_GROUP}/"  # neuraxis.dev/dataset, ... (children.owner_label)


SHARED_MAX = 64  # strings up to this long are shared between objects (keys, labels, phases)


def _shared(value: Any) -> Any:
    if isinstance(value, dict):
        return {sys.intern(k): _shared(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shared(v) for v in value]
    if isinstance(value, str) and len(value) <= SHARED_MAX:
        return sys.intern(value)
    return value


def compact(obj: Obj) -> Obj:
    """The same object with dict keys and short strings interned: thousands of cached objects
    then share one copy of "metadata", "app.kubernetes.io/managed-by", "Succeeded", ..."""
    return {sys.intern(k): _shared(v) for k, v in obj.items()}


def _metadata(meta: Obj, *, annotations: bool = True) -> Obj:
    out = {k: v for k, v in meta.items() if k != "managedFields"}
    if annotations and out.get("annotations"):
        kept = {k: v for k, v in out["annotations"].items() if k not in DROPPED_ANNOTATIONS}
        out["annotations"] = kept
    elif not annotations:
        out.pop("annotations", None)
    return out


def keep_all(obj: Obj) -> Obj:
    """Everything but managedFields and kubectl's copy of the last applied object."""
    return compact({**obj, "metadata": _metadata(obj.get("metadata") or {})})


def keep_meta_status(obj: Obj) -> Obj:
    """Metadata (with our annotations) and status: children whose spec the operator compares
    through its own annotation and the object's generation, not field by field."""
    return compact(
        {
            "metadata": _metadata(obj.get("metadata") or {}),
            **({"status": obj["status"]} if "status" in obj else {}),
        }
    )


# What of a run's Job and pods the reconcilers read: the labels that find them (the owner
# labels, the job name, a pod's completion index), the Job's state, a pod's result.
JOB_METADATA = (
    "name", "namespace", "uid", "labels", "resourceVersion", "generation",
    "creationTimestamp", "deletionTimestamp",
)  # fmt: skip
JOB_STATUS = ("conditions", "active", "terminating", "completionTime", "startTime")
POD_METADATA = (
    "name", "namespace", "labels", "resourceVersion", "creationTimestamp", "deletionTimestamp",
)  # fmt: skip
EDGE_GROUP_LABEL = "neuraxis.dev/edge-group"
# Set by the DaemonSet controller on its pods: the template generation they were made from.
TEMPLATE_GENERATION_LABEL = "pod-template-generation"
RUN_LABELS = (
    "app.kubernetes.io/managed-by",
    "batch.kubernetes.io/job-name",
    "batch.kubernetes.io/job-completion-index",
)


def _run_labels(labels: Obj | None) -> Obj:
    return {
        k: v for k, v in (labels or {}).items() if k in RUN_LABELS or k.startswith(OWNER_PREFIX)
    }


def keep_job(obj: Obj) -> Obj:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    kept_meta = {k: meta[k] for k in JOB_METADATA if k in meta}
    kept_meta["labels"] = _run_labels(meta.get("labels"))
    return compact(
        {
            "metadata": kept_meta,
            "spec": {k: spec[k] for k in ("suspend",) if k in spec},
            "status": {k: status[k] for k in JOB_STATUS if k in status},
        }
    )


# Pod annotations the reconcilers read: where the canary analysis reads a fake pod's /metrics.
POD_ANNOTATIONS_KEPT = (KWOK_METRICS_URL,)


def keep_pod(obj: Obj) -> Obj:
    """Labels, phase and the containers' termination messages (where results arrive); the pod
    IP (where the canary analysis reads a predictor's /metrics)."""
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    containers = []
    for cs in status.get("containerStatuses") or []:
        kept: Obj = {}
        for part in ("state", "lastState"):
            message = ((cs.get(part) or {}).get("terminated") or {}).get("message")
            if message:
                kept[part] = {"terminated": {"message": message}}
        containers.append(kept)
    kept_meta = {k: meta[k] for k in POD_METADATA if k in meta}
    kept_meta["labels"] = _run_labels(meta.get("labels"))
    annotations = meta.get("annotations") or {}
    kept_annotations = {k: annotations[k] for k in POD_ANNOTATIONS_KEPT if k in annotations}
    if kept_annotations:
        kept_meta["annotations"] = kept_annotations
    kept_status: Obj = {"phase": status.get("phase"), "containerStatuses": containers}
    if status.get("podIP"):
        kept_status["podIP"] = status["podIP"]
    out: Obj = {"metadata": kept_meta, "status": kept_status}
    if EDGE_GROUP_LABEL in (meta.get("labels") or {}):
        # An edge agent: its node, readiness and template generation (per-site counts).
        kept_meta["labels"][TEMPLATE_GENERATION_LABEL] = meta["labels"].get(
            TEMPLATE_GENERATION_LABEL, ""
        )
        out["spec"] = {"nodeName": (obj.get("spec") or {}).get("nodeName")}
        out["status"]["conditions"] = [
            {"type": "Ready", "status": c.get("status")}
            for c in status.get("conditions") or []
            if c.get("type") == "Ready"
        ]
    return compact(out)


def keep_node(obj: Obj) -> Obj:
    """Labels and taints (edge targeting) and the Ready condition's status alone (offline
    counts): its heartbeat times change every few seconds and are not kept."""
    meta = obj.get("metadata") or {}
    ready = [
        {"type": "Ready", "status": c.get("status")}
        for c in (obj.get("status") or {}).get("conditions") or []
        if c.get("type") == "Ready"
    ]
    return compact(
        {
            "metadata": {k: meta[k] for k in ("name", "labels", "resourceVersion") if k in meta},
            "spec": {"taints": (obj.get("spec") or {}).get("taints") or []},
            "status": {"conditions": ready},
        }
    )


@dataclass(frozen=True)
class Watched:
    """One kind the operator keeps in memory."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool = True
    label_selector: str | None = None
    trim: Callable[[Obj], Obj] = keep_all
    # Label keys to index: list(kind, ns, {key: value}) is then a lookup, not a scan.
    indexed_labels: tuple[str, ...] = ()
    # Extra indexes: name -> function(object) -> index values (e.g. a spec reference).
    indexes: dict[str, Callable[[Obj], Iterable[str]]] = field(default_factory=dict)

    def path(self, namespace: str | None) -> str:
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        if self.namespaced and namespace:
            return f"{base}/namespaces/{namespace}/{self.plural}"
        return f"{base}/{self.plural}"


def _rv(obj: Obj | None) -> int:
    try:
        return int(((obj or {}).get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


class Informer:
    """The cache of one kind; `handler` hears every change (after the cache has it)."""

    def __init__(
        self,
        kube: Kube,
        watched: Watched,
        namespaces: list[str],
        handler: Handler | None = None,
    ):
        self.kube = kube
        self.watched = watched
        # Empty: every namespace (or a cluster-scoped kind), one list/watch.
        self.namespaces = namespaces if watched.namespaced and namespaces else [""]
        self.handler = handler
        self._objects: dict[Key, Obj] = {}
        self._by_ns: dict[str, set[str]] = {}
        self._labels: dict[tuple[str, str, str], set[str]] = {}  # (ns, key, value) -> names
        self._index: dict[tuple[str, str], set[Key]] = {}  # (index, value) -> keys
        self._lock = threading.RLock()
        self._synced = {ns: threading.Event() for ns in self.namespaces}
        self.events = 0
        self.relists = 0

    # ---- reads ------------------------------------------------------------------------------
    def synced(self) -> bool:
        return all(e.is_set() for e in self._synced.values())

    def wait_synced(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for event in self._synced.values():
            if not event.wait(max(0.0, deadline - time.monotonic())):
                return False
        return True

    def covers(self, namespace: str | None) -> bool:
        """Whether the cache holds `namespace` (an operator watching some namespaces still reads
        a granted cross-namespace input, from the API)."""
        return "" in self.namespaces or (namespace or "") in self.namespaces

    def get(self, namespace: str | None, name: str) -> Obj | None:
        with self._lock:
            return self._objects.get((namespace or "", name))

    def list(
        self, namespace: str | None = None, labels: dict[str, str] | None = None
    ) -> builtins.list[Obj]:
        labels = labels or {}
        with self._lock:
            names: Iterable[Key]
            indexed = [k for k in labels if k in self.watched.indexed_labels]
            if indexed and namespace is not None:
                key = indexed[0]
                found = self._labels.get((namespace, key, labels[key]), set())
                names = [(namespace, n) for n in found]
            elif namespace is not None:
                names = [(namespace, n) for n in self._by_ns.get(namespace, set())]
            else:
                names = list(self._objects)
            out: builtins.list[Obj] = []
            for k in names:
                obj = self._objects.get(k)
                if obj is None:
                    continue
                have = (obj.get("metadata") or {}).get("labels") or {}
                if all(have.get(lk) == lv for lk, lv in labels.items()):
                    out.append(obj)
            return out

    def by_index(self, index: str, value: str) -> builtins.list[Obj]:
        with self._lock:
            return [
                self._objects[k] for k in self._index.get((index, value), ()) if k in self._objects
            ]

    def __len__(self) -> int:
        with self._lock:
            return len(self._objects)

    # ---- writes into the cache ----------------------------------------------------------------
    def _key(self, obj: Obj) -> Key:
        meta = obj.get("metadata") or {}
        return (meta.get("namespace") or "", str(meta.get("name")))

    def _unindex(self, key: Key, obj: Obj) -> None:
        ns, name = key
        self._by_ns.get(ns, set()).discard(name)
        labels = (obj.get("metadata") or {}).get("labels") or {}
        for lk in self.watched.indexed_labels:
            if lk in labels:
                self._labels.get((ns, lk, labels[lk]), set()).discard(name)
        for index, fn in self.watched.indexes.items():
            for value in fn(obj):
                self._index.get((index, value), set()).discard(key)

    def _put(self, key: Key, obj: Obj) -> Obj | None:
        old = self._objects.get(key)
        if old is not None:
            self._unindex(key, old)
        self._objects[key] = obj
        ns, name = key
        self._by_ns.setdefault(ns, set()).add(name)
        labels = (obj.get("metadata") or {}).get("labels") or {}
        for lk in self.watched.indexed_labels:
            if lk in labels:
                self._labels.setdefault((ns, lk, labels[lk]), set()).add(name)
        for index, fn in self.watched.indexes.items():
            for value in fn(obj):
                self._index.setdefault((index, value), set()).add(key)
        return old

    def _remove(self, key: Key) -> Obj | None:
        old = self._objects.pop(key, None)
        if old is not None:
            self._unindex(key, old)
        return old

    def _store(self, raw: Obj) -> Obj:
        obj = self.watched.trim(raw)
        obj["apiVersion"] = self.watched.api_version
        obj["kind"] = self.watched.kind
        return obj

    def observe(self, raw: Obj) -> None:
        """A version this process just wrote (the API's answer): cached at once, so the next
        reconcile does not act on the older one; the watch event that follows is then quiet."""
        obj = self._store(raw)
        key = self._key(obj)
        with self._lock:
            current = self._objects.get(key)
            if current is not None and _rv(current) >= _rv(obj):
                return
            self._put(key, obj)

    def _apply_event(self, type_: str, raw: Obj) -> None:
        obj = self._store(raw)
        key = self._key(obj)
        with self._lock:
            if type_ == "DELETED":
                old = self._remove(key)
                new = None
            else:
                current = self._objects.get(key)
                if current is not None and _rv(current) >= _rv(obj) > 0:
                    return  # our own write, already cached (observe)
                old = self._put(key, obj)
                new = obj
        self.events += 1
        self._notify(
            "DELETED" if new is None else ("ADDED" if old is None else "MODIFIED"), old, new
        )

    def _notify(self, type_: str, old: Obj | None, new: Obj | None) -> None:
        if self.handler is None:
            return
        try:
            self.handler(type_, old, new)
        except Exception:
            log.exception("%s event handler failed", self.watched.kind)

    # ---- list and watch -----------------------------------------------------------------------
    def _list(self, namespace: str) -> str:
        """List everything (in pages) and replace this namespace's part of the cache,
        reporting the differences; returns the list's resourceVersion."""
        items: builtins.list[Obj] = []
        token = None
        while True:
            page = self.kube.request(
                "GET",
                self.watched.path(namespace),
                query={
                    "labelSelector": self.watched.label_selector,
                    "limit": 500,
                    "continue": token,
                },
                verb="list",
            )
            items.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                version = str((page.get("metadata") or {}).get("resourceVersion") or "")
                break
        fresh = {self._key(o): o for o in (self._store(i) for i in items)}
        with self._lock:
            if namespace:
                stale = [
                    (namespace, n)
                    for n in self._by_ns.get(namespace, set())
                    if (namespace, n) not in fresh
                ]
            else:
                stale = [k for k in self._objects if k not in fresh]
            changes: builtins.list[tuple[str, Obj | None, Obj | None]] = []
            for key in stale:
                changes.append(("DELETED", self._remove(key), None))
            for key, obj in fresh.items():
                old = self._objects.get(key)
                if old is None or _rv(old) != _rv(obj):
                    self._put(key, obj)
                    changes.append(("ADDED" if old is None else "MODIFIED", old, obj))
        self.relists += 1
        for change in changes:
            self._notify(*change)
        return version

    def _watch(self, namespace: str, version: str, stop: threading.Event) -> str | None:
        """Follow changes from `version`; the version to go on from, or None to list again."""
        query = {
            "labelSelector": self.watched.label_selector,
            "resourceVersion": version,
            "allowWatchBookmarks": True,
            "timeoutSeconds": WATCH_TIMEOUT_S,
        }
        for event in self.kube.watch_lines(
            self.watched.path(namespace), query, WATCH_TIMEOUT_S + 30
        ):
            if stop.is_set():
                return version
            type_, obj = event.get("type"), event.get("object") or {}
            if type_ == "ERROR":
                if obj.get("code") == 410:
                    return None  # too old: list again
                raise ApiError(
                    int(obj.get("code") or 0),
                    str(obj.get("reason")),
                    str(obj.get("message")),
                    "WATCH",
                    self.watched.path(namespace),
                )
            version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
            if type_ != "BOOKMARK":
                self._apply_event(str(type_), obj)
        return version

    def run(self, namespace: str, stop: threading.Event) -> None:
        """List and watch one namespace until `stop`; errors back off and list again."""
        version: str | None = None
        failures = 0
        while not stop.is_set():
            try:
                if version is None:
                    version = self._list(namespace)
                    self._synced[namespace].set()
                version = self._watch(namespace, version, stop)
                failures = 0
            except ApiError as exc:
                failures += 1
                low, high = RELIST_BACKOFF_S
                wait = min(high, low * 2 ** min(failures, 10))
                log.warning(
                    "watch of %s (%s): %s; again in %.1fs",
                    self.watched.plural,
                    namespace or "all",
                    exc.short(),
                    wait,
                )
                if exc.status == 410:
                    version = None
                stop.wait(wait)
            except Exception:
                log.exception("watch of %s failed", self.watched.plural)
                version = None
                stop.wait(RELIST_BACKOFF_S[1])

    def start(self, stop: threading.Event) -> builtins.list[threading.Thread]:
        threads = []
        for ns in self.namespaces:
            thread = threading.Thread(
                target=self.run,
                args=(ns, stop),
                name=f"watch-{self.watched.plural}-{ns or 'all'}",
                daemon=True,
            )
            thread.start()
            threads.append(thread)
        return threads
