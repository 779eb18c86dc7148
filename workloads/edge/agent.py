"""The edge agent: the pinned bundle (fetch, verify, cache) and inference-log sync, around the
inference server's app (one serving implementation for cluster and edge).

Decisions:
- The agent serves one bundle: the digest the EdgeDeployment pinned (`--digest`; without it, the
  digest of the first bundle it verified). A bundle with another digest is refused, however
  consistent its manifest: a forger can re-hash a manifest, not match the pinned digest.
- No silent swap: whatever appears later at the bundle URI is compared with the pin and never
  installed; a new bundle arrives only through a rollout (a new DaemonSet template with a new
  `--digest`, i.e. a new spec generation).
- A bundle is used only when every file matches the manifest; a tampered or incomplete bundle is
  refused and the model already serving (or cached) keeps serving.
- With the lake unreachable or its bundle refused at start, the agent serves the cached bundle
  of the pinned digest; with none it does not start (reason NoBundle or ArtifactChanged).
- A failed log write is counted and logged but does not fail the prediction: the edge keeps
  answering when its disk is full; the metric says records were lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

from prometheus_client import Counter, Gauge

from neuraxis.lake import Lake
from neuraxis.workloads.artifact import (
    ARTIFACT_CHANGED,
    MANIFEST,
    ArtifactIntegrityError,
    artifact_digest,
    read_verified,
    sha256_digest,
)
from neuraxis.workloads.edge.cache import BundleCache
from neuraxis.workloads.edge.health import LakeContact
from neuraxis.workloads.edge.lake_table import LakeFields
from neuraxis.workloads.edge.log_buffer import LogBuffer
from neuraxis.workloads.serve.metrics import ServeMetrics
from neuraxis.workloads.serve.model_loader import (
    LoadedModel,
    ModelLoadError,
    model_from_files,
    split_artifact_uri,
)
from neuraxis.workloads.serve.responses import labels
from neuraxis.workloads.serve.runtime import ModelSlot

log = logging.getLogger(__name__)


class BundleUnavailableError(RuntimeError):
    """The lake (or the bundle's manifest) cannot be reached now; retry later."""


class BundleRefusedError(RuntimeError):
    """The bundle failed verification or does not load; it is never served."""


class AgentStartError(RuntimeError):
    """No verified bundle from the lake and none in the cache."""

    def __init__(self, message: str, reason: str = "NoBundle"):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class FetchedBundle:
    digest: str
    files: dict[str, bytes]
    manifest: bytes


def fetch_bundle(
    uri: str, known_digest: str | None, expected_digest: str | None = None
) -> FetchedBundle | None:
    """Fetch and verify the bundle at `uri`; None when its digest is `known_digest`. A bundle
    whose digest is not `expected_digest` (the one the EdgeDeployment pinned) is refused."""
    root, folder = split_artifact_uri(uri)
    lake = Lake(root)
    try:
        manifest = lake.read_bytes(f"{folder}/{MANIFEST}")
        doc = json.loads(manifest)
        digest = doc["digest"]
    except Exception as exc:
        raise BundleUnavailableError(f"{uri}: cannot read {MANIFEST} ({exc})") from exc
    if digest == known_digest:
        return None
    if expected_digest is not None and digest != expected_digest:
        raise BundleRefusedError(
            f"{ARTIFACT_CHANGED}: {uri}: digest {digest} is not the pinned {expected_digest}"
        )
    try:
        files = read_verified(lake, folder)
        # The manifest kept must be the one the files were checked against (no concurrent edit).
        same = {n: sha256_digest(d) for n, d in files.items()} == doc["files"]
        if not same or artifact_digest(lake, folder) != digest:
            raise ArtifactIntegrityError(f"{uri}: the bundle changed while it was being read")
    except ArtifactIntegrityError as exc:
        raise BundleRefusedError(str(exc)) from exc
    except Exception as exc:
        raise BundleUnavailableError(f"{uri}: cannot read the bundle ({exc})") from exc
    return FetchedBundle(digest=digest, files=files, manifest=manifest)


def refusal_reason(exc: BundleRefusedError) -> str:
    """The `reason` label of a refusal (bounded: three values)."""
    if ARTIFACT_CHANGED in str(exc):
        return ARTIFACT_CHANGED
    return "LoadFailed" if isinstance(exc.__cause__, ModelLoadError) else "Tampered"


def input_summary(row: list[float]) -> dict[str, float]:
    return {"n": len(row), "min": min(row), "max": max(row), "mean": sum(row) / len(row)}


def log_records(
    model: LoadedModel,
    rows: list[list[float]],
    outputs: list[Any],
    lake_fields: LakeFields | None = None,
) -> list[dict[str, Any]]:
    """One inference-log record per row (pure apart from the id and the clock). `lake_fields`
    adds what the edge-logs Delta table needs (workloads/edge/lake_table.py)."""
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    sig = model.signature
    predictions = labels(sig, outputs) if sig.task == "classification" else outputs
    return [
        {
            "id": uuid4().hex,
            "ts": now,
            "model": model.name,
            "model_version": model.version,
            "bundle_digest": model.digest,
            "inputs": input_summary(row),
            "prediction": prediction,
            "output": output,
            **(lake_fields.for_row(sig.feature_names, row, output) if lake_fields else {}),
        }
        for row, prediction, output in zip(rows, predictions, outputs, strict=True)
    ]


@dataclass(frozen=True)
class AgentConfig:
    bundle_uri: str
    cache_dir: Path
    lake_root: str
    log_prefix: str  # inference-logs/<ns>/<deployment>/<node>
    node: str
    model_name: str
    check_interval_s: float = 60.0
    sync_interval_s: float = 300.0
    expected_digest: str | None = None  # the pinned bundle digest: nothing else is served
    lake_fields: LakeFields | None = None  # site, features, confidence, hard-example flag


class EdgeMetrics:
    def __init__(self, metrics: ServeMetrics):
        r = metrics.registry
        # Also remembers the last contact that worked: neuraxis_edge_seconds_offline.
        self.lake_reachable = LakeContact(
            Gauge("neuraxis_edge_lake_reachable", "1 when the last lake access worked.", registry=r)
        )
        self.refusals = Counter(
            "neuraxis_edge_bundle_refusals",
            "Bundles refused, by reason: ArtifactChanged (not the pinned digest), Tampered (a "
            "file differs from the manifest), LoadFailed (does not load).",
            ["reason"],
            registry=r,
        )
        self.logs_pending = Gauge(
            "neuraxis_edge_logs_pending", "Inference-log records not yet uploaded.", registry=r
        )
        self.logs_uploaded = Counter(
            "neuraxis_edge_logs_uploaded", "Inference-log records uploaded.", registry=r
        )
        self.log_errors = Counter(
            "neuraxis_edge_log_write_errors", "Inference-log batches not written.", registry=r
        )


class EdgeAgent:
    def __init__(self, config: AgentConfig, metrics: ServeMetrics):
        self.config = config
        self.metrics = EdgeMetrics(metrics)
        self.cache = BundleCache(config.cache_dir / "cache")
        self.buffer = LogBuffer(config.cache_dir / "logs", config.node)
        self.lake = Lake(config.lake_root)
        self.slot: ModelSlot | None = None
        self.digest: str | None = None
        self.metrics.logs_pending.set(self.buffer.pending_records())

    # ---- bundles --------------------------------------------------------------------------------
    def _load(self, digest: str, files: dict[str, bytes]) -> LoadedModel:
        try:
            return model_from_files(self.config.model_name, digest, files)
        except ModelLoadError as exc:
            raise BundleRefusedError(f"{self.config.bundle_uri}: {exc}") from exc

    @staticmethod
    def _refusal(reason: str) -> str:
        return ARTIFACT_CHANGED if ARTIFACT_CHANGED in reason else "NoBundle"

    def _from_cache(self, reason: str) -> LoadedModel:
        expected = self.config.expected_digest
        # The pinned bundle if the cache has it (current or previous), else the current one.
        cached = (self.cache.find(expected) if expected else None) or self.cache.current()
        if cached is None:
            raise AgentStartError(
                f"{reason}; and no cached bundle in {self.cache.root}", self._refusal(reason)
            )
        if expected is not None and cached.digest != expected:
            raise AgentStartError(
                f"{reason}; and the cached bundle {cached.digest} is not the pinned {expected}",
                self._refusal(reason),
            )
        try:
            files = self.cache.load(cached)  # every file, as fetch_bundle reads them
        except ArtifactIntegrityError as exc:
            raise AgentStartError(f"{reason}; and the cached bundle is corrupt ({exc})") from exc
        log.warning("%s: serving the cached bundle %s (%s)", reason, cached.digest, cached.uri)
        return self._load(cached.digest, files)

    def initial_model(self) -> LoadedModel:
        """The bundle from the lake when it is there and verifies, else the cached one."""
        try:
            fetched = fetch_bundle(
                self.config.bundle_uri,
                known_digest=None,
                expected_digest=self.config.expected_digest,
            )
            assert fetched is not None
            model = self._load(fetched.digest, fetched.files)
        except BundleUnavailableError as exc:
            self.metrics.lake_reachable.set(0)
            model = self._from_cache(f"lake unreachable: {exc}")
        except BundleRefusedError as exc:
            self.metrics.lake_reachable.set(1)
            self.metrics.refusals.labels(refusal_reason(exc)).inc()
            log.error("refused bundle: %s", exc)
            model = self._from_cache(f"bundle refused: {exc}")
        else:
            self.metrics.lake_reachable.set(1)
            self.cache.store(
                self.config.bundle_uri, fetched.digest, fetched.files, fetched.manifest
            )
        self.digest = model.digest
        return model

    async def check_once(self) -> None:
        """Compare the bundle at the URI with the one served, never install it: anything else
        there is refused (counted in neuraxis_edge_bundle_refusals_total, logged with both
        digests) and the pinned model keeps serving."""
        try:
            fetched = await asyncio.to_thread(
                fetch_bundle, self.config.bundle_uri, self.digest, self.digest
            )
        except BundleUnavailableError as exc:
            self.metrics.lake_reachable.set(0)
            log.warning("bundle check: %s", exc)
            return
        except BundleRefusedError as exc:
            self.metrics.lake_reachable.set(1)
            self.metrics.refusals.labels(refusal_reason(exc)).inc()
            log.error("refused bundle, still serving the pinned %s: %s", self.digest, exc)
            return
        assert fetched is None  # the pinned digest or a refusal: fetch_bundle returns no other
        self.metrics.lake_reachable.set(1)

    # ---- inference logs -------------------------------------------------------------------------
    def record(self, model: LoadedModel, rows: list[list[float]], outputs: list[Any]) -> None:
        """The prediction hook (worker thread): durable before the client gets its answer."""
        records = log_records(model, rows, outputs, self.config.lake_fields)
        try:
            self.buffer.append(records)
        except OSError:
            self.metrics.log_errors.inc()
            log.exception("inference log not written (%d records)", len(records))
            return
        self.metrics.logs_pending.inc(len(records))

    def sync_once(self) -> int:
        """Seal the active log and upload every sealed segment (blocking)."""
        self.buffer.seal()
        try:
            uploaded = self.buffer.upload(self.lake, self.config.log_prefix)
        except Exception as exc:
            self.metrics.lake_reachable.set(0)
            log.warning("inference logs kept locally (lake unreachable: %s)", exc)
            uploaded = 0
        else:
            if uploaded:  # nothing to upload touched no lake: it says nothing of it
                self.metrics.lake_reachable.set(1)
        self.metrics.logs_uploaded.inc(uploaded)
        self.metrics.logs_pending.set(self.buffer.pending_records())
        return uploaded

    # ---- lifecycle ------------------------------------------------------------------------------
    async def _every(self, seconds: float, name: str, step: Any) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await step()
            except Exception:
                log.exception("%s failed; retrying in %ss", name, seconds)

    async def _sync_async(self) -> None:
        await asyncio.to_thread(self.sync_once)

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Runs the check and sync loops while the server runs; a last sync at shutdown."""
        tasks = [
            asyncio.create_task(
                self._every(self.config.check_interval_s, "bundle check", self.check_once)
            ),
            asyncio.create_task(
                self._every(self.config.sync_interval_s, "log sync", self._sync_async)
            ),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await asyncio.to_thread(self.sync_once)  # what cannot be uploaded stays on disk
            self.buffer.close()
