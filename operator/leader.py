"""Leader election on a coordination.k8s.io/v1 Lease: of the operator's replicas, only the one
holding the Lease reconciles; the others keep their watch caches warm and take over when the
holder stops renewing.

The holder renews every `renew_s`. Another replica takes the Lease over when the renewal it
last saw is `lease_s` old *by its own clock* (it times how long the Lease stays unchanged, as
client-go does), so clock skew between machines does not matter. Writes carry the Lease's
resourceVersion: of two replicas trying at once, one wins and the other gets 409. A holder that
cannot renew within `renew_deadline_s` stops leading (the caller exits: a restarted process
rejoins as a follower), which is before anyone else may take over (`lease_s` later)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from neuraxis.operator.kube import ApiError, Kube, RetryPolicy

log = logging.getLogger("neuraxis.operator")
Obj = dict[str, Any]
ONE_TRY = RetryPolicy(attempts=1)


def micro_time() -> str:
    """metav1.MicroTime: RFC 3339 with microseconds."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class LeaseConfig:
    namespace: str
    name: str
    identity: str
    lease_s: float = 15.0
    renew_s: float = 5.0
    retry_s: float = 2.0

    @property
    def renew_deadline_s(self) -> float:
        # Stop leading well before the others may take over.
        return max(self.renew_s, self.lease_s * 2 / 3)

    def __post_init__(self) -> None:
        if not 0 < self.renew_s < self.lease_s or self.retry_s <= 0:
            raise ValueError(f"lease needs 0 < renew < lease and retry > 0: {self}")


class LeaderElector:
    def __init__(
        self, kube: Kube, config: LeaseConfig, clock: Callable[[], float] = time.monotonic
    ):
        self.kube = kube
        self.config = config
        self._clock = clock
        self._observed: tuple[str, str] | None = None  # (holder, renewTime) last seen
        self._observed_at = 0.0
        self.leading = False
        self.taken_over = False

    @property
    def path(self) -> str:
        c = self.config
        return f"/apis/coordination.k8s.io/v1/namespaces/{c.namespace}/leases/{c.name}"

    def _spec(self, transitions: int, acquired: str | None) -> Obj:
        now = micro_time()
        return {
            "holderIdentity": self.config.identity,
            "leaseDurationSeconds": max(1, round(self.config.lease_s)),
            "acquireTime": acquired or now,
            "renewTime": now,
            "leaseTransitions": transitions,
        }

    def try_acquire_or_renew(self) -> bool:
        """One attempt; True when this replica holds the Lease afterwards. Any failure is a
        failed attempt, as in client-go: the election thread must never die quietly, or the
        replica would stay a follower that never campaigns again."""
        try:
            return self._attempt()
        except Exception:
            log.exception("leader lease: attempt failed")
            return False

    def _attempt(self) -> bool:
        c = self.config
        try:
            lease = self.kube.request("GET", self.path, retry=ONE_TRY, timeout_s=c.retry_s)
        except ApiError as exc:
            if exc.status != 404:
                log.warning("leader lease: %s", exc.short())
                return False
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": c.name, "namespace": c.namespace},
                "spec": self._spec(0, None),
            }
            return self._write("POST", self.path.rsplit("/", 1)[0], body)
        spec = lease.get("spec") or {}
        holder = str(spec.get("holderIdentity") or "")
        record = (holder, str(spec.get("renewTime") or ""))
        now = self._clock()
        if record != self._observed:
            self._observed, self._observed_at = record, now
        transitions = int(spec.get("leaseTransitions") or 0)
        if self.leading and holder != c.identity:
            self.taken_over = True  # another replica holds it now: stop at once
            return False
        if holder == c.identity:
            body = {**lease, "spec": self._spec(transitions, spec.get("acquireTime"))}
            return self._write("PUT", self.path, body)
        duration = float(spec.get("leaseDurationSeconds") or c.lease_s)
        if holder and now - self._observed_at < duration:
            return False  # held, and renewed recently enough
        body = {**lease, "spec": self._spec(transitions + 1, None)}
        return self._write("PUT", self.path, body)

    def _write(self, method: str, path: str, body: Obj) -> bool:
        try:
            self.kube.request(method, path, body=body, retry=ONE_TRY, timeout_s=self.config.retry_s)
        except ApiError as exc:
            if exc.status != 409:  # 409: someone else wrote first
                log.warning("leader lease: %s", exc.short())
            return False
        return True

    def release(self) -> None:
        """On a clean stop: give the Lease up so that another replica takes over at once."""
        if not self.leading:
            return
        try:
            lease = self.kube.request("GET", self.path, retry=ONE_TRY, timeout_s=2)
            if (lease.get("spec") or {}).get("holderIdentity") == self.config.identity:
                spec = {**lease["spec"], "holderIdentity": "", "leaseDurationSeconds": 1}
                self.kube.request(
                    "PUT", self.path, body={**lease, "spec": spec}, retry=ONE_TRY, timeout_s=2
                )
        except ApiError as exc:
            log.warning("leader lease release: %s", exc.short())
        self.leading = False

    def run(
        self, stop: threading.Event, on_started: Callable[[], None], on_lost: Callable[[], None]
    ) -> None:
        """Campaign until leading, call `on_started`, then renew until `stop`; when renewing
        fails for `renew_deadline_s`, call `on_lost` and return."""
        c = self.config
        while not stop.is_set():
            if self.try_acquire_or_renew():
                break
            stop.wait(c.retry_s)
        else:
            return
        self.leading = True
        log.info("leader lease %s/%s acquired by %s", c.namespace, c.name, c.identity)
        on_started()
        last_renewal = self._clock()
        while not stop.wait(c.renew_s if self._clock() - last_renewal < c.renew_s else c.retry_s):
            if self.try_acquire_or_renew():
                last_renewal = self._clock()
            elif self.taken_over or self._clock() - last_renewal > c.renew_deadline_s:
                self.leading = False
                why = (
                    "taken over"
                    if self.taken_over
                    else f"not renewed for {c.renew_deadline_s:.1f}s"
                )
                log.error("leader lease %s/%s lost (%s)", c.namespace, c.name, why)
                on_lost()
                return
