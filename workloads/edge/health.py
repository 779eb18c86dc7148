"""Edge fleet health: device and service metrics of one agent, and their offline buffer.

Every value is read when asked (a Prometheus scrape or a snapshot), from /proc and from the
agent's own state, so nothing goes stale between scrapes. Snapshots of the same values are taken
every `interval_s`, appended to a bounded on-disk buffer next to the inference-log buffer, and
uploaded with the logs (`sync_interval_s`): a node that was offline for a day uploads that day's
snapshots when it is back, so the fleet view has no holes. Upload is idempotent like the log
buffer's: the object name is derived from the content (node and first timestamp), so a crash
between upload and truncation re-writes the same object.

    <cache>/health/pending.jsonl   one snapshot a line (at most `max_snapshots`; oldest dropped)
    lake: edge-health/<ns>/<deployment>/<node>/<node>-<first ts>.jsonl
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from neuraxis.lake import Lake
from neuraxis.workloads.edge.log_buffer import complete_prefix
from neuraxis.workloads.serve.metrics import LATENCY_BUCKETS, ServeMetrics

if TYPE_CHECKING:
    from neuraxis.workloads.edge.agent import EdgeAgent

log = logging.getLogger(__name__)
PENDING = "pending.jsonl"


# ---- /proc (psutil is not a dependency: these few numbers are one read each) -----------------
def parse_meminfo(text: str) -> dict[str, int]:
    """`/proc/meminfo` in bytes: {"MemTotal": ..., "MemAvailable": ...}."""
    out = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            scale = 1024 if len(parts) > 1 and parts[1] == "kB" else 1
            out[key.strip()] = int(parts[0]) * scale
    return out


def parse_cpu_times(text: str) -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from `/proc/stat`; idle and iowait are not busy."""
    for line in text.splitlines():
        if line.startswith("cpu "):
            values = [int(v) for v in line.split()[1:]]
            # user nice system idle iowait irq softirq steal (guest is already in user)
            total = sum(values[:8])
            return total - values[3] - (values[4] if len(values) > 4 else 0), total
    raise ValueError("/proc/stat has no aggregate cpu line")


def parse_rss(text: str) -> int:
    """Resident set size in bytes from `/proc/self/status` (VmRSS)."""
    return parse_meminfo(text).get("VmRSS", 0)


def _read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


class HostCpu:
    """Host CPU utilisation (0..1) over the time since the previous reading."""

    def __init__(self, read: Callable[[], str] = lambda: _read("/proc/stat")):
        self._read = read
        self._lock = threading.Lock()
        self._last = parse_cpu_times(read())

    def utilization(self) -> float:
        busy, total = parse_cpu_times(self._read())
        with self._lock:
            last_busy, last_total = self._last
            if total > last_total:  # at least one tick: else keep the previous window
                self._last = (busy, total)
                return (busy - last_busy) / (total - last_total)
        return 0.0


# ---- lake contact -----------------------------------------------------------------------------
class LakeContact:
    """The agent's `neuraxis_edge_lake_reachable` gauge that also remembers the last successful
    contact: every place that sets it (bundle checks, log and health uploads) feeds it."""

    def __init__(self, gauge: Gauge, clock: Callable[[], float] = time.monotonic):
        self.gauge = gauge
        self._clock = clock
        self._last_ok = clock()  # never reached yet: offline since start
        self._reachable = False

    def set(self, value: float) -> None:
        self.gauge.set(value)
        self._reachable = bool(value)
        if value:
            self._last_ok = self._clock()

    def seconds_offline(self) -> float:
        """0 while the last access worked; else the time since the last one that did."""
        return 0.0 if self._reachable else max(0.0, self._clock() - self._last_ok)


# ---- what is measured -------------------------------------------------------------------------
class EdgeHealth:
    """The agent's health values, read now; also a Prometheus collector of them."""

    def __init__(self, agent: EdgeAgent, metrics: ServeMetrics, buffer: HealthBuffer):
        self.agent = agent
        self.buffer = buffer
        self.host_cpu = HostCpu()
        r = metrics.registry
        self.inference = Histogram(
            "neuraxis_edge_inference_seconds", "Model forward time per batch on this node.",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.snapshots_uploaded = Counter(
            "neuraxis_edge_health_snapshots_uploaded", "Health snapshots uploaded.", registry=r
        )
        self.snapshots_dropped = Counter(
            "neuraxis_edge_health_snapshots_dropped",
            "Health snapshots dropped (buffer full while offline).", registry=r,
        )  # fmt: skip
        self._forwards = [0, 0.0]  # count, seconds: the mean since the previous snapshot
        self._lock = threading.Lock()
        r.register(_Collector(self))

    def observe_forward(self, rows: int, seconds: float) -> None:
        """The slot's forward hook (event loop)."""
        self.inference.observe(seconds)
        with self._lock:
            self._forwards[0] += 1
            self._forwards[1] += seconds

    def _forward_mean(self) -> float:
        with self._lock:
            count, total = self._forwards
            self._forwards = [0, 0.0]
        return total / count if count else 0.0

    def sample(self) -> dict[str, float]:
        """Every gauge value now (names without the `neuraxis_edge_` prefix)."""
        meminfo = parse_meminfo(_read("/proc/meminfo"))
        cpu = os.times()
        agent = self.agent
        runtime = agent.slot.current if agent.slot is not None else None
        cached = agent.cache.current()
        age = 0.0
        if cached is not None:
            with contextlib.suppress(OSError):
                age = time.time() - (agent.cache.root / "current.json").stat().st_mtime
        return {
            "process_cpu_seconds": cpu.user + cpu.system,
            "process_resident_memory_bytes": float(parse_rss(_read("/proc/self/status"))),
            "host_cpu_utilization": self.host_cpu.utilization(),
            "host_memory_total_bytes": float(meminfo.get("MemTotal", 0)),
            "host_memory_available_bytes": float(meminfo.get("MemAvailable", 0)),
            "queue_depth": float(runtime.batcher.depth() if runtime else 0),
            "batch_size_limit": float(runtime.batcher.max_batch_size if runtime else 0),
            "bundle_cached": 1.0 if cached is not None else 0.0,
            "bundle_cache_age_seconds": max(0.0, age),
            "seconds_offline": agent.metrics.lake_reachable.seconds_offline(),
            "health_snapshots_pending": float(self.buffer.pending()),
        }

    def snapshot(self) -> dict[str, object]:
        values: dict[str, object] = dict(self.sample())
        values["inference_seconds_mean"] = self._forward_mean()
        # neuraxis_edge_logs_pending on /metrics (a gauge the agent keeps): counted here afresh.
        values["logs_pending"] = self.agent.buffer.pending_records()
        cached = self.agent.cache.current()
        return {
            "ts": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "node": self.agent.config.node,
            "bundle_digest": cached.digest if cached else None,
            "serving_digest": self.agent.digest,
            **values,
        }


_HELP = {
    "process_cpu_seconds": "CPU seconds (user + system) used by the agent process.",
    "process_resident_memory_bytes": "Resident memory of the agent process.",
    "host_cpu_utilization": "Host CPU busy ratio (0..1) since the previous reading.",
    "host_memory_total_bytes": "Host memory (MemTotal).",
    "host_memory_available_bytes": "Host memory available (MemAvailable).",
    "queue_depth": "Rows waiting for a forward plus requests being read.",
    "batch_size_limit": "The current maximum batch size (adapts with a latency target).",
    "bundle_cached": "1 when a verified bundle is in the local cache.",
    "bundle_cache_age_seconds": "Seconds since the cached bundle was stored.",
    "seconds_offline": "Seconds since the last successful lake contact (0 while reachable).",
    "health_snapshots_pending": "Health snapshots on local disk, not yet uploaded.",
}


class _Collector(Collector):
    def __init__(self, health: EdgeHealth):
        self.health = health

    def collect(self) -> Iterable[Metric]:
        for name, value in self.health.sample().items():
            yield GaugeMetricFamily(f"neuraxis_edge_{name}", _HELP[name], value=value)
        cached = self.health.agent.cache.current()
        if cached is not None:
            info = GaugeMetricFamily(
                "neuraxis_edge_bundle_cached_info",
                "The cached bundle (value 1).",
                labels=["digest"],
            )
            info.add_metric([cached.digest], 1.0)
            yield info


# ---- the offline buffer -----------------------------------------------------------------------
class HealthBuffer:
    """Bounded JSONL of snapshots not yet uploaded (the oldest go first when full)."""

    def __init__(self, directory: Path, node: str, max_snapshots: int):
        if max_snapshots < 1:
            raise ValueError("max_snapshots must be >= 1")
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / PENDING
        self.node = node
        self.max_snapshots = max_snapshots
        self._lock = threading.Lock()
        lines = self._lines()
        if self.path.exists():  # a crash can tear the last line
            self._rewrite(lines)
        self._count = len(lines)  # kept in memory: a scrape does not read the file

    def _lines(self) -> list[bytes]:
        try:
            return complete_prefix(self.path.read_bytes()).splitlines(keepends=True)
        except FileNotFoundError:
            return []

    def _rewrite(self, lines: list[bytes]) -> None:
        tmp = self.path.with_name(f".{PENDING}.tmp")
        with open(tmp, "wb") as fh:
            fh.writelines(lines)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def pending(self) -> int:
        return self._count

    def append(self, snapshot: dict[str, object]) -> int:
        """Add one snapshot durably; returns how many old ones were dropped to stay bounded."""
        line = json.dumps(snapshot, sort_keys=True).encode() + b"\n"
        with self._lock:
            if self._count < self.max_snapshots:
                with open(self.path, "ab") as fh:
                    fh.write(line)
                    fh.flush()
                    os.fsync(fh.fileno())
                self._count += 1
                return 0
            lines = self._lines()
            dropped = len(lines) + 1 - self.max_snapshots
            self._rewrite([*lines[dropped:], line])
            self._count = self.max_snapshots
            return dropped

    def upload(self, lake: Lake, prefix: str) -> int:
        """Write the pending snapshots to one lake object, then forget them; returns how many.
        Raises what the lake raises (nothing is forgotten then)."""
        with self._lock:
            lines = self._lines()
            if not lines:
                return 0
            first = json.loads(lines[0])["ts"].replace(":", "").replace("-", "")
            lake.write_bytes(f"{prefix}/{self.node}-{first}.jsonl", b"".join(lines))
            # The lock keeps appends out meanwhile: everything read was uploaded.
            self._rewrite([])
            self._count = 0
            return len(lines)


@dataclass(frozen=True)
class HealthConfig:
    directory: Path
    prefix: str  # edge-health/<ns>/<deployment>/<node>
    interval_s: float = 60.0
    sync_interval_s: float = 300.0
    max_snapshots: int = 10_080  # a week of one a minute


def health_prefix(log_prefix: str) -> str:
    """`inference-logs/<ns>/<deployment>/<node>` -> `edge-health/<ns>/<deployment>/<node>`
    (`Lake.edge_health_path`)."""
    _, namespace, deployment, node = log_prefix.split("/", 3)
    return f"{Lake.edge_health_path(namespace, deployment)}/{node}"


class HealthReporter:
    """Takes snapshots and uploads them while the server runs (the agent's lifespan hook)."""

    def __init__(self, agent: EdgeAgent, metrics: ServeMetrics, config: HealthConfig):
        self.agent = agent
        self.config = config
        self.buffer = HealthBuffer(config.directory, agent.config.node, config.max_snapshots)
        self.health = EdgeHealth(agent, metrics, self.buffer)

    def snapshot_once(self) -> None:
        dropped = self.buffer.append(self.health.snapshot())
        if dropped:
            self.health.snapshots_dropped.inc(dropped)

    def upload_once(self) -> int:
        try:
            uploaded = self.buffer.upload(self.agent.lake, self.config.prefix)
        except Exception as exc:
            self.agent.metrics.lake_reachable.set(0)
            log.warning("health snapshots kept locally (lake unreachable: %s)", exc)
            return 0
        if uploaded:  # nothing to upload touched no lake: it says nothing of it
            self.agent.metrics.lake_reachable.set(1)
        self.health.snapshots_uploaded.inc(uploaded)
        return uploaded

    async def _loop(self, seconds: float, step: Callable[[], object]) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await asyncio.to_thread(step)
            except Exception:
                log.exception("edge health step failed; again in %ss", seconds)

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        await asyncio.to_thread(self.snapshot_once)  # the start is a data point too
        tasks = [
            asyncio.create_task(self._loop(self.config.interval_s, self.snapshot_once)),
            asyncio.create_task(self._loop(self.config.sync_interval_s, self.upload_once)),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await asyncio.to_thread(self.snapshot_once)
            await asyncio.to_thread(self.upload_once)  # what cannot be uploaded stays on disk
