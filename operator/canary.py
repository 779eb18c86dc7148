"""Canary analysis: read the predictor pods' /metrics, add up the stable and the canary side,
and decide whether the canary is worse than the stable version by more than the thresholds of
`spec.serving.canary.analysis`.

The figures are the servers' cumulative counters (since each pod started), not a window: a
canary is judged on everything it has served, and a rolled-back canary stays rolled back for
its generation, so a window would only add state. Errors are 5xx answers on the prediction
routes: a 4xx is the client's input, which the stable version would refuse the same way.

The network is in `fetch_metrics` (an injectable `MetricsFetch`); everything else is pure."""

from __future__ import annotations

import logging
import math
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from neuraxis.crds.modelversion import CanaryAnalysis
from neuraxis.operator.children import KWOK_ANNOTATION_PREFIX
from neuraxis.workloads.result import (
    PREDICTION_ROUTES,
    SERVE_LATENCY_METRIC,
    SERVE_REQUESTS_METRIC,
)

log = logging.getLogger("neuraxis.operator")

MetricsFetch = Callable[[str], str]  # a /metrics URL -> its exposition text
# Test clusters only (KWOK pods have no server): the URL a pod's metrics are read from, honoured
# with NEURAXIS_ALLOW_KWOK_ANNOTATIONS like the other `neuraxis.dev/kwok-*` annotations.
KWOK_METRICS_URL = f"{KWOK_ANNOTATION_PREFIX}metrics-url"
FETCH_TIMEOUT_S = 5.0
QUANTILE = 0.99


@dataclass
class TrackFigures:
    """Prediction requests, 5xx answers and the latency histogram of one side (one or more
    pods): `buckets` maps each upper bound in seconds to its cumulative count."""

    requests: float = 0.0
    errors: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)
    pods: int = 0

    @property
    def error_ratio(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def p99_ms(self) -> float | None:
        seconds = histogram_quantile(QUANTILE, self.buckets)
        return None if seconds is None else seconds * 1000.0

    def add(self, other: TrackFigures) -> None:
        self.requests += other.requests
        self.errors += other.errors
        for bound, count in other.buckets.items():
            self.buckets[bound] = self.buckets.get(bound, 0.0) + count
        self.pods += other.pods

    def as_status(self) -> dict[str, object]:
        p99 = self.p99_ms()
        out: dict[str, object] = {
            "requests": int(self.requests),
            "errorRatio": round(self.error_ratio, 6),
        }
        if p99 is not None:
            out["p99LatencyMs"] = round(p99, 3)
        return out


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """The q-quantile of a cumulative histogram, interpolated linearly inside the bucket it
    falls in (as Prometheus' histogram_quantile); the largest finite bound when it falls in
    the +Inf bucket; None without observations."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def parse_exposition(text: str) -> TrackFigures:
    """The prediction figures of one server's /metrics (Prometheus text exposition)."""
    figures = TrackFigures(pods=1)
    for family in text_string_to_metric_families(text):
        if family.name == SERVE_REQUESTS_METRIC:
            for sample in family.samples:
                if not sample.name.endswith("_total"):
                    continue
                if sample.labels.get("route") not in PREDICTION_ROUTES:
                    continue
                figures.requests += sample.value
                if sample.labels.get("code", "").startswith("5"):
                    figures.errors += sample.value
        elif family.name == SERVE_LATENCY_METRIC:
            for sample in family.samples:
                if not sample.name.endswith("_bucket"):
                    continue
                if sample.labels.get("route") not in PREDICTION_ROUTES:
                    continue
                bound = float(sample.labels["le"])
                figures.buckets[bound] = figures.buckets.get(bound, 0.0) + sample.value
    return figures


def fetch_metrics(url: str) -> str:
    """GET a pod's /metrics (the one network call of the analysis)."""
    with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as response:
        body: bytes = response.read()
    return body.decode("utf-8", errors="replace")


def pod_metrics_url(pod: Mapping[str, Any], port: int, allow_kwok: bool) -> str | None:
    """Where a running pod's /metrics is; None for a pod that is not running (yet)."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    if allow_kwok and KWOK_METRICS_URL in annotations:
        return str(annotations[KWOK_METRICS_URL])
    status = pod.get("status") or {}
    if status.get("phase") != "Running" or not status.get("podIP"):
        return None
    ip = str(status["podIP"])
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}:{port}/metrics"


def gather(urls: Iterable[str], fetch: MetricsFetch) -> tuple[TrackFigures, list[str]]:
    """The figures of every pod added up, and the URLs that could not be read or parsed."""
    total, failed = TrackFigures(), []
    for url in urls:
        try:
            total.add(parse_exposition(fetch(url)))
        except Exception as exc:  # a pod going away mid-read is normal; judged without it
            log.warning("canary analysis: cannot read %s: %s", url, exc)
            failed.append(url)
    return total, failed


@dataclass(frozen=True)
class Verdict:
    """`roll_back`: the canary is worse by more than a threshold; `judged`: both sides had
    enough requests to compare. `message` gives the figures either way."""

    roll_back: bool
    judged: bool
    message: str


def _figures(name: str, f: TrackFigures) -> str:
    p99 = f.p99_ms()
    latency = "n/a" if p99 is None else f"{p99:.1f} ms"
    return (
        f"{name}: {int(f.requests)} requests from {f.pods} pod(s), error ratio "
        f"{f.error_ratio:.4f}, p99 {latency}"
    )


def judge(stable: TrackFigures, canary: TrackFigures, analysis: CanaryAnalysis) -> Verdict:
    """Compare the canary with the stable version by the thresholds of `analysis`."""
    figures = f"{_figures('canary', canary)}; {_figures('stable', stable)}"
    low = [
        n for n, f in (("canary", canary), ("stable", stable)) if f.requests < analysis.min_requests
    ]
    if low:
        return Verdict(
            False,
            False,
            f"waiting for {analysis.min_requests} requests on {' and '.join(low)} ({figures})",
        )
    breaches = []
    error_rise = canary.error_ratio - stable.error_ratio
    limit = analysis.max_error_ratio_increase
    if limit is not None and error_rise > limit:
        breaches.append(f"error ratio +{error_rise:.4f} > {limit:g}")
    canary_p99, stable_p99 = canary.p99_ms(), stable.p99_ms()
    latency_limit = analysis.max_p99_latency_increase_ms
    if latency_limit is not None and canary_p99 is not None and stable_p99 is not None:
        rise = canary_p99 - stable_p99
        if rise > latency_limit:
            breaches.append(f"p99 latency +{rise:.1f} ms > {latency_limit:g} ms")
    if breaches:
        return Verdict(True, True, f"{'; '.join(breaches)} ({figures})")
    return Verdict(False, True, f"within the thresholds ({figures})")


Condition = tuple[str, bool, str, str]  # as outcomes.Condition: type, status, reason, message
CANARY_CONDITION = "Canary"
ROLLED_BACK = "CanaryRolledBack"


@dataclass(frozen=True)
class CanaryState:
    """The analysis's outcome for this reconcile: whether the canary is rolled back, the
    status.trafficSplit fields it owns, and the condition to set (None: leave it)."""

    rolled_back: bool
    split: dict[str, object]
    condition: Condition | None


def _due(analyzed_at: object, interval_s: float, now: datetime) -> bool:
    if not isinstance(analyzed_at, str):
        return True
    try:
        last = datetime.fromisoformat(analyzed_at.replace("Z", "+00:00"))
    except ValueError:
        return True
    return (now - last).total_seconds() >= interval_s


_ANALYSIS_FIELDS = (
    "analyzedAt",
    "stable",
    "canary",
    "message",
    "rolledBack",
    "rolledBackGeneration",
)


def analyze_canary(
    analysis: CanaryAnalysis | None,
    generation: int | None,
    old_split: dict[str, object],
    pods: tuple[list[str], list[str]],
    now: datetime,
    fetch: MetricsFetch = fetch_metrics,
) -> CanaryState:
    """Judge the canary when an analysis is asked for and its interval has passed. `pods` are
    the /metrics URLs of the stable and the canary pods. A rollback holds for the generation
    it happened in: only a spec change (a new generation) lets the canary take traffic again."""
    kept = {k: old_split[k] for k in _ANALYSIS_FIELDS if k in old_split}
    if old_split.get("rolledBackGeneration") == generation and old_split.get("rolledBack"):
        message = str(old_split.get("message") or "")
        return CanaryState(True, kept, (CANARY_CONDITION, False, ROLLED_BACK, message))
    kept.pop("rolledBack", None)
    kept.pop("rolledBackGeneration", None)
    if analysis is None:
        return CanaryState(False, {}, None)
    if not _due(old_split.get("analyzedAt"), analysis.interval_seconds, now):
        return CanaryState(False, kept, None)
    stable, stable_failed = gather(pods[0], fetch)
    canary, canary_failed = gather(pods[1], fetch)
    verdict = judge(stable, canary, analysis)
    message = verdict.message
    if stable_failed or canary_failed:
        message += f"; {len(stable_failed) + len(canary_failed)} pod(s) could not be read"
    split: dict[str, object] = {
        "analyzedAt": now.isoformat().replace("+00:00", "Z"),
        "stable": stable.as_status(),
        "canary": canary.as_status(),
        "message": message,
    }
    if verdict.roll_back:
        split.update(rolledBack=True, rolledBackGeneration=generation)
        log.warning("canary rolled back (generation %s): %s", generation, message)
        return CanaryState(True, split, (CANARY_CONDITION, False, ROLLED_BACK, message))
    reason = "CanaryHealthy" if verdict.judged else "CanaryAnalysisPending"
    return CanaryState(False, split, (CANARY_CONDITION, True, reason, message))
