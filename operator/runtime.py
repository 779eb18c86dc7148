"""The operator's runtime: watch caches of the four kinds, their children and Nodes; a queue of
resources to reconcile; worker threads that reconcile one resource each at a time.

What puts a resource in the queue:
- a change of the resource itself (not of its status alone: only the operator writes status);
- a change of one of its children (found by the owner label), debounced: a burst of child
  events reconciles the owner once, after DEBOUNCE_S;
- a phase change of one of its inputs (the Dataset a TrainingJob reads, ...), at once;
- the start of leadership and the periodic resync (level-based: everything, cheaply).
Steady state sends no GET or LIST: reads come from the caches."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from neuraxis.crds.kinds import KINDS
from neuraxis.operator.children import MANAGED_BY, owner_label
from neuraxis.operator.cluster import CR_VERSION, Cluster, EventSink, Obj
from neuraxis.operator.edge_sites import node_ready, pod_ready
from neuraxis.operator.errors import InvalidSpecError
from neuraxis.operator.informer import (
    EDGE_GROUP_LABEL,
    TEMPLATE_GENERATION_LABEL,
    Informer,
    Watched,
    keep_job,
    keep_meta_status,
    keep_node,
    keep_pod,
)
from neuraxis.operator.kube import ApiError, ApiUnavailableError, Kube, reconciling
from neuraxis.operator.metrics import (
    CACHED_OBJECTS,
    CACHES_SYNCED,
    QUEUE_DEPTH,
    RECONCILE_ERRORS,
    RECONCILE_SECONDS,
    RECONCILES,
    RESOURCES_BY_PHASE,
    TRAINING_METRICS,
)
from neuraxis.operator.reconcile import reconcile
from neuraxis.operator.settings import OperatorSettings
from neuraxis.operator.workqueue import WorkQueue
from neuraxis.references import GRANT_ANNOTATION

log = logging.getLogger("neuraxis.operator")

Key = tuple[str, str, str]  # (kind, namespace, name)
DEBOUNCE_S = 0.2
NODE_DEBOUNCE_S = 1.0
ERROR_BACKOFF_S = (0.5, 300.0)
MANAGED = f"{MANAGED_BY}=neuraxis"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"


def _termination_messages(pod: Obj | None) -> list[Any]:
    """The containers' kept termination messages (informer.keep_pod keeps only those)."""
    return [cs for cs in _dig(pod, "status", "containerStatuses") or [] if cs]


def _dig(obj: Any, *path: str) -> Any:
    for key in path:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj


def _ref(obj: Obj, *path: str) -> list[str]:
    """`<namespace>/<name>` of each object a spec field names, for the dependents indexes: the
    reference's own `namespace` (a granted cross-namespace datasetRef) or the object's. A `[]`
    in the path stands for every item of a list (a federated job's sites)."""
    own = obj["metadata"].get("namespace")
    out = []
    for holder in _dig_all(obj.get("spec"), path[:-1]):
        if not isinstance(holder, dict) or not isinstance(holder.get(path[-1]), str):
            continue
        namespace = holder.get("namespace") if len(path) > 1 else None
        out.append(f"{namespace if isinstance(namespace, str) else own}/{holder[path[-1]]}")
    return out


def _dig_all(obj: Any, path: tuple[str, ...]) -> list[Any]:
    if "[]" not in path:
        return [_dig(obj, *path)]
    at = path.index("[]")
    items = _dig(obj, *path[:at])
    rest = path[at + 1 :]
    return [v for item in items or [] if isinstance(items, list) for v in _dig_all(item, rest)]


# What each kind reads, as (index name, spec path of the input's name, input kind): when an
# input changes phase, the resources found under its name in that index are reconciled.
INPUT_INDEXES: dict[str, list[tuple[str, tuple[str, ...], str]]] = {
    "Dataset": [
        ("upstream", ("source", "from", "datasetRef", "name"), "Dataset"),
        ("edgelogs", ("source", "from", "edgeDeploymentRef", "name"), "EdgeDeployment"),
    ],
    "TrainingJob": [
        ("dataset", ("datasetRef", "name"), "Dataset"),
        ("sitedataset", ("federation", "sites", "[]", "datasetRef", "name"), "Dataset"),
    ],
    "ModelVersion": [
        ("trainingjob", ("source", "trainingJobRef", "name"), "TrainingJob"),
        ("evaluation", ("evaluation", "datasetRef", "name"), "Dataset"),
        ("stable", ("serving", "canary", "stableRef", "name"), "ModelVersion"),
        ("model", ("model",), "ModelVersion"),  # canaries follow any version of their model
    ],
    "EdgeDeployment": [("modelversion", ("modelVersionRef", "name"), "ModelVersion")],
}


def _index_by(path: tuple[str, ...]) -> Callable[[Obj], Iterable[str]]:
    return lambda obj: _ref(obj, *path)


def _indexes(kind: str) -> dict[str, Callable[[Obj], Iterable[str]]]:
    return {name: _index_by(path) for name, path, _ in INPUT_INDEXES[kind]}


def watched_kinds(has_kind: Callable[[str, str], bool]) -> list[Watched]:
    """The four kinds, their children (those the operator labels), and Nodes."""
    ours = [
        Watched(CR_VERSION, info.kind, info.plural, indexes=_indexes(info.kind))
        for info in KINDS.values()
    ]
    owners = tuple(owner_label(k) for k in KINDS)
    children = [
        Watched("batch/v1", "Job", "jobs", label_selector=MANAGED, trim=keep_job,
                indexed_labels=owners),
        Watched("v1", "Pod", "pods", label_selector=MANAGED, trim=keep_pod,
                indexed_labels=(JOB_NAME_LABEL,)),
        Watched("batch/v1", "CronJob", "cronjobs", label_selector=MANAGED, trim=keep_meta_status),
        Watched("v1", "Service", "services", label_selector=MANAGED, trim=keep_meta_status),
        Watched("v1", "ConfigMap", "configmaps", label_selector=MANAGED, trim=keep_meta_status),
        Watched("apps/v1", "Deployment", "deployments", label_selector=MANAGED,
                trim=keep_meta_status),
        Watched("apps/v1", "DaemonSet", "daemonsets", label_selector=MANAGED,
                trim=keep_meta_status),
        Watched("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers",
                label_selector=MANAGED, trim=keep_meta_status),
        Watched("v1", "ServiceAccount", "serviceaccounts", label_selector=MANAGED,
                trim=keep_meta_status),
        Watched("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings",
                label_selector=MANAGED, trim=keep_meta_status),
        Watched("v1", "Node", "nodes", namespaced=False, trim=keep_node),
    ]  # fmt: skip
    optional = [
        Watched("gateway.networking.k8s.io/v1", "HTTPRoute", "httproutes",
                label_selector=MANAGED, trim=keep_meta_status),
        Watched("monitoring.coreos.com/v1", "ServiceMonitor", "servicemonitors",
                label_selector=MANAGED, trim=keep_meta_status),
    ]  # fmt: skip
    return ours + children + [w for w in optional if has_kind(w.api_version, w.kind)]


def _grant(obj: Obj | None) -> str | None:
    annotations = _dig(obj, "metadata", "annotations") or {}
    grant = annotations.get(GRANT_ANNOTATION)
    return grant if isinstance(grant, str) else None


def _status_only(old: Obj | None, new: Obj | None) -> bool:
    """A change of status alone (the operator's own writes): nothing to reconcile."""
    if old is None or new is None:
        return False
    a, b = old.get("metadata") or {}, new.get("metadata") or {}
    return all(a.get(k) == b.get(k) for k in ("generation", "labels", "annotations")) and (
        a.get("deletionTimestamp") == b.get("deletionTimestamp")
    )


def _agent_state(pod: Obj) -> tuple[bool, str, str]:
    labels = _dig(pod, "metadata", "labels") or {}
    node = _dig(pod, "spec", "nodeName") or ""
    return pod_ready(pod), node, labels.get(TEMPLATE_GENERATION_LABEL, "")


def _terminal(pod: Obj | None) -> bool:
    return (_dig(pod, "status", "phase") or "") in ("Succeeded", "Failed")


class Runtime:
    """Caches, queue and workers; `start` runs them, `lead` lets the workers reconcile."""

    def __init__(self, kube: Kube, settings: OperatorSettings, namespaces: list[str]):
        self.kube = kube
        self.settings = settings
        self.namespaces = namespaces  # empty: every namespace
        self.queue: WorkQueue[Key] = WorkQueue()
        probe = Cluster(kube)
        self.informers: dict[tuple[str, str], Informer] = {}
        for watched in watched_kinds(probe.has_kind):
            informer = Informer(kube, watched, namespaces, self._handler_for(watched.kind))
            self.informers[(watched.api_version, watched.kind)] = informer
        self.events = EventSink(kube)
        self.cluster = Cluster(kube, self.informers, self.events)
        self._failures: dict[Key, int] = {}
        self._failures_lock = threading.Lock()
        self.stop = threading.Event()
        self.leading = threading.Event()
        self._threads: list[threading.Thread] = []

    # ---- reads ------------------------------------------------------------------------------
    def informer(self, kind: str, api_version: str = CR_VERSION) -> Informer:
        return self.informers[(api_version, kind)]

    def synced(self) -> bool:
        return all(i.synced() for i in self.informers.values())

    # ---- events -> queue ----------------------------------------------------------------------
    def _handler_for(self, kind: str) -> Callable[[str, Obj | None, Obj | None], None]:
        if kind in KINDS:
            return self._on_resource
        if kind == "Pod":
            return self._on_pod
        if kind == "Node":
            return self._on_node
        if kind == "Job":
            return self._on_job
        if kind in ("ServiceAccount", "RoleBinding"):
            return lambda *_: None  # read by ensure_accounts; nothing to reconcile
        return self._on_child

    def _on_resource(self, type_: str, old: Obj | None, new: Obj | None) -> None:
        obj = new or old
        assert obj is not None
        meta = obj["metadata"]
        key = (obj["kind"], meta.get("namespace") or "", meta["name"])
        if new is None:
            self.queue.forget(key)
            with self._failures_lock:
                self._failures.pop(key, None)
            self._enqueue_dependents(obj)  # they now wait for an input that is gone
            return
        if not _status_only(old, new):
            self.queue.add(key)
        if _grant(old) != _grant(new):
            self._enqueue_dependents(obj)  # a granted or revoked cross-namespace reader

    def _enqueue_owner(self, obj: Obj, delay: float = DEBOUNCE_S) -> None:
        meta = obj.get("metadata") or {}
        labels = meta.get("labels") or {}
        for kind in KINDS:
            name = labels.get(owner_label(kind))
            if name:
                self.queue.add((kind, meta.get("namespace") or "", name), delay)
                return

    def _on_child(self, type_: str, old: Obj | None, new: Obj | None) -> None:
        obj = new or old
        if obj is not None:
            self._enqueue_owner(obj)

    def _on_job(self, type_: str, old: Obj | None, new: Obj | None) -> None:
        """A Job's ending (conditions), its pods stopping, or its deletion matter."""
        if old is not None and new is not None:
            a, b = old.get("status") or {}, new.get("status") or {}
            same = all(a.get(k) == b.get(k) for k in ("conditions", "active", "terminating"))
            same = same and _dig(old, "spec", "suspend") == _dig(new, "spec", "suspend")
            same = same and _status_only(old, new)
            if same:
                return
        self._on_child(type_, old, new)

    def _on_pod(self, type_: str, old: Obj | None, new: Obj | None) -> None:
        """A run's pod ending (its result arrives in the termination message) or going away."""
        obj = new or old
        labels = _dig(obj, "metadata", "labels") or {}
        if JOB_NAME_LABEL not in labels:
            # A predictor or agent pod: its Deployment/DaemonSet status tells, except why it
            # refused to start (ArtifactChanged), which only its termination message says.
            if _termination_messages(new) != _termination_messages(old):
                self._enqueue_owner(obj or {})
            elif EDGE_GROUP_LABEL in labels and (
                old is None or new is None or _agent_state(old) != _agent_state(new)
            ):
                self._enqueue_owner(obj or {})  # the per-site counts read each agent pod
            return
        if new is None or (_terminal(new) and not _terminal(old)):
            self._enqueue_owner(obj or {})

    def _on_node(self, type_: str, old: Obj | None, new: Obj | None) -> None:
        """Edge targeting reads node labels and taints, the site counts its Ready condition (not
        the rest of its status: heartbeats change it every few seconds)."""
        if (
            old is not None
            and new is not None
            and _dig(old, "metadata", "labels") == _dig(new, "metadata", "labels")
            and _dig(old, "spec", "taints") == _dig(new, "spec", "taints")
            and node_ready(old) == node_ready(new)  # offline counts per site
        ):
            return
        for ed in self.informer("EdgeDeployment").list():
            meta = ed["metadata"]
            self.queue.add(("EdgeDeployment", meta["namespace"], meta["name"]), NODE_DEBOUNCE_S)

    def _enqueue_dependents(self, obj: Obj) -> None:
        """The resources that read this one (as an input) are reconciled at once."""
        meta = obj["metadata"]
        ref = f"{meta.get('namespace')}/{meta['name']}"
        for kind, indexes in INPUT_INDEXES.items():
            for index, _path, input_kind in indexes:
                if input_kind != obj["kind"]:
                    continue
                values = [ref]
                if index == "model":  # a canary follows the versions of its model
                    values = _ref(obj, "model")
                for dependent in self.informer(kind).by_index(index, values[0] if values else ""):
                    dmeta = dependent["metadata"]
                    if (kind, dmeta["name"]) != (obj["kind"], meta["name"]):
                        self.queue.add((kind, dmeta["namespace"], dmeta["name"]))

    # ---- workers ------------------------------------------------------------------------------
    def reconcile_key(self, key: Key) -> float | None:
        """Reconcile one resource from the cache; the delay before it should run again (None:
        only when something changes)."""
        kind, namespace, name = key
        body = self.informer(kind).get(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        before = _dig(body, "status", "phase")
        try:
            with RECONCILE_SECONDS.labels(kind=kind).time(), reconciling(kind):
                status = reconcile(body, self.cluster, self.settings)
        except InvalidSpecError as exc:  # in status; permanent until the spec changes
            RECONCILES.labels(kind=kind, outcome="invalid").inc()
            RECONCILE_ERRORS.labels(kind=kind, reason=exc.reason).inc()
            self._succeeded(key)
            return None
        except ApiUnavailableError as exc:  # in status (Degraded): retry slowly
            RECONCILES.labels(kind=kind, outcome="degraded").inc()
            log.warning("%s %s/%s: %s", kind, namespace, name, exc.short())
            return self.settings.degraded_retry_seconds
        except ApiError as exc:
            if exc.status == 409:  # written from a stale cache: again once it caught up
                RECONCILES.labels(kind=kind, outcome="conflict").inc()
                log.info("%s %s/%s: conflict, again in 1 s: %s", kind, namespace, name, exc.short())
                return 1.0
            RECONCILES.labels(kind=kind, outcome="error").inc()
            RECONCILE_ERRORS.labels(kind=kind, reason=exc.reason or str(exc.status)).inc()
            log.warning("%s %s/%s: %s", kind, namespace, name, exc.short())
            return self._failed(key)
        except Exception as exc:
            RECONCILES.labels(kind=kind, outcome="error").inc()
            RECONCILE_ERRORS.labels(kind=kind, reason=type(exc).__name__).inc()
            log.exception("reconcile of %s %s/%s failed", kind, namespace, name)
            return self._failed(key)
        RECONCILES.labels(kind=kind, outcome="ok").inc()
        if status.get("phase") != before:
            self._enqueue_dependents(body)
        self._succeeded(key)
        return None

    def _failed(self, key: Key) -> float:
        with self._failures_lock:
            count = self._failures[key] = self._failures.get(key, 0) + 1
        low, high = ERROR_BACKOFF_S
        return float(min(high, low * 2 ** min(count - 1, 20)))

    def _succeeded(self, key: Key) -> None:
        with self._failures_lock:
            self._failures.pop(key, None)

    def _work(self) -> None:
        while not self.stop.is_set():
            if not self.leading.wait(timeout=1.0):
                continue
            key = self.queue.get(timeout=1.0)
            if key is None:
                continue
            try:
                again = self.reconcile_key(key) if self.leading.is_set() else 0.0
            finally:
                self.queue.done(key)
            if again is not None:
                self.queue.add(key, again)

    # ---- lifecycle ----------------------------------------------------------------------------
    def enqueue_all(self, spread_s: float = 0.0) -> None:
        """Level-based: every resource of the four kinds (a finished one costs a dict lookup).
        `spread_s` spreads them over that many seconds, behind what events bring: a resync of
        thousands of resources must not delay the reconcile a change asks for."""
        counts: dict[tuple[str, str], int] = {}
        bodies = [body for kind in KINDS for body in self.informer(kind).list()]
        for index, body in enumerate(bodies):
            meta = body["metadata"]
            delay = spread_s * (index + 1) / len(bodies)
            self.queue.add((body["kind"], meta["namespace"], meta["name"]), delay)
            phase = str(_dig(body, "status", "phase") or "Pending")
            counts[(body["kind"], phase)] = counts.get((body["kind"], phase), 0) + 1
        RESOURCES_BY_PHASE.clear()
        for (kind, phase), n in counts.items():
            RESOURCES_BY_PHASE.labels(kind=kind, phase=phase).set(n)
        export_training_metrics(self.informer("TrainingJob").list())

    def _resync(self) -> None:
        while not self.stop.wait(self.settings.resync_seconds):
            if self.leading.is_set():
                self.enqueue_all(spread_s=self.settings.resync_seconds / 2)

    def _gauges(self) -> None:
        while not self.stop.wait(2.0):
            CACHES_SYNCED.set(1 if self.synced() else 0)
            QUEUE_DEPTH.set(len(self.queue))
            for (_, kind), informer in self.informers.items():
                CACHED_OBJECTS.labels(kind=kind).set(len(informer))

    def start(self) -> None:
        """Start the caches, workers and resync (the workers wait for `lead`)."""
        for informer in self.informers.values():
            self._threads += informer.start(self.stop)
        loops = ((self._work, self.settings.workers), (self._resync, 1), (self._gauges, 1))
        for target, count in loops:
            for index in range(count):
                thread = threading.Thread(
                    target=target, name=f"{target.__name__.strip('_')}-{index}", daemon=True
                )
                thread.start()
                self._threads.append(thread)

    def lead(self, timeout: float = 120.0) -> None:
        """Begin reconciling: once the caches are synced, everything once, then on events."""
        self.wait_synced(timeout)
        CACHES_SYNCED.set(1)
        self.enqueue_all()
        self.leading.set()

    def wait_synced(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        for informer in self.informers.values():
            if not informer.wait_synced(max(0.0, deadline - time.monotonic())):
                plural = informer.watched.plural
                raise RuntimeError(f"the {plural} cache did not sync within {timeout:.0f}s")

    def alive(self) -> bool:
        return not self.stop.is_set() and all(t.is_alive() for t in self._threads)

    def shutdown(self) -> None:
        self.leading.clear()
        self.stop.set()
        self.queue.close()
        self.events.drain()


def export_training_metrics(jobs: list[dict[str, Any]]) -> None:
    """`neuraxis_training_metric` from the status of every TrainingJob (deleted jobs vanish)."""
    TRAINING_METRICS.clear()
    for body in jobs:
        meta = body["metadata"]
        for metric, value in (_dig(body, "status", "metrics") or {}).items():
            if isinstance(value, int | float):
                TRAINING_METRICS.labels(meta["namespace"], meta["name"], metric).set(value)
