"""The operator's runtime: one API client and the entry points every trigger calls."""

from __future__ import annotations

import logging
from typing import Any

from kubernetes import client as k8s

from neuraxis.crds.kinds import KINDS
from neuraxis.operator.children import owner_label
from neuraxis.operator.cluster import CR_VERSION, Cluster, Obj
from neuraxis.operator.errors import InvalidSpecError
from neuraxis.operator.kube import ApiError, Kube, RetryPolicy
from neuraxis.operator.metrics import (
    RECONCILE_ERRORS,
    RECONCILE_SECONDS,
    RECONCILES,
    RESOURCES_BY_PHASE,
)
from neuraxis.operator.reconcile import reconcile
from neuraxis.operator.settings import OperatorSettings

log = logging.getLogger("neuraxis.operator")

# What each kind waits for: the input's kind and the spec field naming it. When an input
# changes phase, the resources that reference it are reconciled at once.
INPUTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "TrainingJob": ("Dataset", ("datasetRef", "name")),
    "ModelVersion": ("TrainingJob", ("source", "trainingJobRef", "name")),
    "EdgeDeployment": ("ModelVersion", ("modelVersionRef", "name")),
}


def _dig(obj: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj


class Runtime:
    """Everything the kopf registrations call into."""

    def __init__(
        self, api_client: k8s.ApiClient, settings: OperatorSettings, namespaces: list[str]
    ):
        kube = Kube(
            api_client,
            qps=settings.api_qps,
            burst=settings.api_burst,
            timeout_s=settings.api_timeout_seconds,
            retry=RetryPolicy(
                attempts=settings.api_retries + 1, cap_s=settings.api_retry_cap_seconds
            ),
        )
        self.cluster = Cluster(kube)
        self.settings = settings
        self.namespaces = namespaces  # empty: every namespace
        self._phases: dict[tuple[str, str, str], str] = {}
        # (input kind, namespace, input name) -> names of the resources waiting on it, by kind.
        self._dependents: dict[tuple[str, str, str], set[tuple[str, str]]] = {}

    def _index(self, body: Obj) -> None:
        kind, meta = body["kind"], body["metadata"]
        if kind in INPUTS:
            input_kind, path = INPUTS[kind]
            input_name = _dig(body.get("spec"), path)
            if isinstance(input_name, str):
                key = (input_kind, meta["namespace"], input_name)
                self._dependents.setdefault(key, set()).add((kind, meta["name"]))

    def reconcile_body(self, body: Obj) -> Obj:
        kind = body["kind"]
        self._index(body)
        with RECONCILE_SECONDS.labels(kind=kind).time():
            try:
                status = reconcile(body, self.cluster, self.settings)
            except InvalidSpecError as exc:
                RECONCILES.labels(kind=kind, outcome="invalid").inc()
                RECONCILE_ERRORS.labels(kind=kind, reason=exc.reason).inc()
                raise
            except Exception as exc:
                RECONCILES.labels(kind=kind, outcome="error").inc()
                RECONCILE_ERRORS.labels(kind=kind, reason=type(exc).__name__).inc()
                raise
        RECONCILES.labels(kind=kind, outcome="ok").inc()
        self._after(body, str(status.get("phase")))
        return status

    def _after(self, body: Obj, phase: str) -> None:
        """On a phase change, reconcile the resources that depend on this one."""
        meta = body["metadata"]
        key = (body["kind"], meta["namespace"], meta["name"])
        if self._phases.get(key) == phase:
            return
        self._phases[key] = phase
        for kind, name in sorted(self._dependents.get(key, set())):
            dependent = self.cluster.get(CR_VERSION, kind, meta["namespace"], name)
            if dependent is not None:
                self.reconcile_quietly(dependent)
        if body["kind"] == "ModelVersion":  # canaries follow their stable version
            for other in self.cluster.list(CR_VERSION, "ModelVersion", meta["namespace"]):
                if (
                    _dig(other.get("spec"), ("serving", "canary"))
                    and other["metadata"]["name"] != meta["name"]
                ):
                    self.reconcile_quietly(other)

    def reconcile_quietly(self, body: Obj) -> None:
        """For triggers that are not kopf handlers: errors are logged and recorded in status."""
        if body["metadata"].get("deletionTimestamp"):
            return
        try:
            self.reconcile_body(body)
        except InvalidSpecError:
            pass  # already in status; kopf's own handler reports it
        except ApiError as exc:  # an answer or an outage, not a bug: no traceback
            log.warning(
                "reconcile of %s %s: %s", body["kind"], body["metadata"]["name"], exc.short()
            )
        except Exception:
            log.exception(
                "reconcile of %s %s/%s failed",
                body["kind"],
                body["metadata"].get("namespace"),
                body["metadata"]["name"],
            )

    def reconcile_owner_of(self, child: Obj, deleted: bool = False) -> None:
        """A child changed: reconcile the Neuraxis resource it belongs to."""
        if deleted:
            self.cluster.forget(child)
        meta = child.get("metadata") or {}
        labels = meta.get("labels") or {}
        for kind in KINDS:
            name = labels.get(owner_label(kind))
            if name:
                parent = self.cluster.get(CR_VERSION, kind, meta.get("namespace"), name)
                if parent is not None:
                    self.reconcile_quietly(parent)
                return

    def resync(self) -> None:
        """Level-based resync of everything: restores drifted children, refreshes status."""
        self.cluster.forget()  # re-apply everything once: restores children edited by others
        counts: dict[tuple[str, str], int] = {}
        for kind in KINDS:
            for ns in self.namespaces or [None]:  # type: ignore[list-item]
                for body in self.cluster.list(CR_VERSION, kind, ns):
                    self.reconcile_quietly(body)
                    fresh_phase = self._phases.get(
                        (kind, body["metadata"]["namespace"], body["metadata"]["name"]), "Pending"
                    )
                    counts[(kind, fresh_phase)] = counts.get((kind, fresh_phase), 0) + 1
        RESOURCES_BY_PHASE.clear()
        for (kind, phase), n in counts.items():
            RESOURCES_BY_PHASE.labels(kind=kind, phase=phase).set(n)
