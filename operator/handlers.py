"""kopf registrations, all in one place and thin: every trigger ends in Runtime.reconcile_body.

- create/update/resume of a Neuraxis resource: a kopf handler (retries with backoff on
  TemporaryError; PermanentError for specs that cannot work);
- any event of a child we manage (Job, Deployment, Service, ...): reconcile its owner (Pods
  are not watched: a Job's condition changes after its pods have written their results);
- a periodic resync of everything (drift correction, level-based)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from neuraxis import API_GROUP, API_VERSION
from neuraxis.crds.kinds import KINDS
from neuraxis.operator.children import MANAGED_BY
from neuraxis.operator.errors import InvalidSpecError
from neuraxis.operator.kube import ApiError, ApiUnavailableError
from neuraxis.operator.runtime import Runtime

log = logging.getLogger("neuraxis.operator")

CHILD_RESOURCES = [
    ("batch", "v1", "jobs"),
    ("batch", "v1", "cronjobs"),
    ("", "v1", "services"),
    ("", "v1", "configmaps"),
    ("apps", "v1", "deployments"),
    ("apps", "v1", "daemonsets"),
]


def configure_kopf(settings: kopf.OperatorSettings, workers: int) -> None:
    """kopf's own bookkeeping lives under the neuraxis.dev prefix."""
    settings.persistence.finalizer = f"{API_GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=API_GROUP, key="last-handled-configuration"
    )
    settings.posting.enabled = False  # the reconcilers post their own phase-transition Events
    settings.watching.server_timeout = 300
    settings.execution.max_workers = workers
    settings.networking.request_timeout = 60  # kopf's own calls have a timeout too


def build_registry(runtime: Runtime) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # A registry of our own does not carry kopf's default login handlers.
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure_kopf(settings, runtime.settings.workers)

    def handle(body: kopf.Body, **_: Any) -> None:
        try:
            runtime.reconcile_body(dict(body))
        except InvalidSpecError as exc:
            raise kopf.PermanentError(f"{exc.reason}: {exc.message}") from exc
        except ApiUnavailableError as exc:  # status says Degraded: retry slowly
            delay = runtime.settings.degraded_retry_seconds
            raise kopf.TemporaryError(exc.short(), delay=delay) from exc
        except ApiError as exc:
            if exc.status == 409:  # a conflict: someone else wrote first, read again
                raise kopf.TemporaryError(exc.short(), delay=1) from exc
            raise

    for info in KINDS.values():
        for cause, on in (
            ("create", kopf.on.create),
            ("update", kopf.on.update),
            ("resume", kopf.on.resume),
        ):
            on(
                API_GROUP,
                API_VERSION,
                info.plural,
                registry=registry,
                id=f"reconcile-{cause}",
                backoff=5,
            )(handle)

    def child_event(body: kopf.Body, type: str | None, **_: Any) -> None:
        runtime.reconcile_owner_of(dict(body), deleted=type == "DELETED")

    for group, version, plural in CHILD_RESOURCES:
        kopf.on.event(group, version, plural, labels={MANAGED_BY: "neuraxis"}, registry=registry)(
            child_event
        )

    @kopf.on.startup(registry=registry)
    async def start_resync(memo: kopf.Memo, **_: Any) -> None:
        async def loop() -> None:
            while True:
                await asyncio.sleep(runtime.settings.resync_seconds)
                try:
                    await asyncio.to_thread(runtime.resync)
                except Exception:
                    log.exception("resync failed")

        memo["resync"] = asyncio.create_task(loop())

    @kopf.on.cleanup(registry=registry)
    async def stop_resync(memo: kopf.Memo, **_: Any) -> None:
        task = memo.get("resync")
        if task is not None:
            task.cancel()

    return registry
