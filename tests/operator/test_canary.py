"""The canary analysis over real exposition text: the figures come from the inference server's
own metrics objects (`ServeMetrics`), parsed by prometheus_client's parser as the operator
reads a pod's /metrics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from neuraxis.crds.modelversion import CanaryAnalysis
from neuraxis.operator.canary import (
    KWOK_METRICS_URL,
    ROLLED_BACK,
    TrackFigures,
    analyze_canary,
    gather,
    histogram_quantile,
    judge,
    parse_exposition,
    pod_metrics_url,
)
from neuraxis.workloads.result import INFER_V2_ROUTE, PREDICT_V1_ROUTE
from neuraxis.workloads.serve.metrics import ServeMetrics

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def served(ok: int, errors: int = 0, seconds: float = 0.003, slow: int = 0) -> str:
    """The exposition of a server that answered `ok` predictions (and `errors` 500s) in
    `seconds`, `slow` of them in 0.3 s, plus traffic the analysis must not count."""
    metrics = ServeMetrics()
    for i in range(ok):
        route = PREDICT_V1_ROUTE if i % 2 else INFER_V2_ROUTE
        metrics.observe(route, 200, 0.3 if i < slow else seconds)
    for _ in range(errors):
        metrics.observe(PREDICT_V1_ROUTE, 500, seconds)
    for _ in range(7):
        metrics.observe(PREDICT_V1_ROUTE, 400, seconds)  # the client's bad input
        metrics.observe("/readyz", 503, 2.0)  # not a prediction
    return metrics.exposition().decode()


def test_the_exposition_counts_predictions_and_5xx_only() -> None:
    figures = parse_exposition(served(90, errors=10))
    assert (figures.requests, figures.errors) == (107, 10)
    assert figures.error_ratio == pytest.approx(10 / 107)
    # Every request was 3 ms: p99 lies in the (2 ms, 5 ms] bucket.
    p99 = figures.p99_ms()
    assert p99 is not None and 2.0 < p99 <= 5.0


def test_p99_comes_from_the_histogram_buckets() -> None:
    assert histogram_quantile(0.99, {}) is None
    assert histogram_quantile(0.99, {0.1: 0.0, float("inf"): 0.0}) is None
    # 99 observations in (0.002, 0.005], 3 in (0.2, 0.5]: rank 100.98 of 102.
    buckets = {0.002: 0.0, 0.005: 99.0, 0.2: 99.0, 0.5: 102.0, float("inf"): 102.0}
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.2 + 0.3 * 1.98 / 3)
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.002 + 0.003 * 51 / 99)
    # Beyond the largest finite bound: that bound (as Prometheus answers).
    assert histogram_quantile(0.99, {1.0: 0.0, float("inf"): 5.0}) == 1.0


ERRORS = CanaryAnalysis(max_error_ratio_increase=0.05, min_requests=50)
LATENCY = CanaryAnalysis(max_p99_latency_increase_ms=50, min_requests=50)


def test_a_canary_with_more_errors_is_rolled_back_with_the_figures() -> None:
    stable, canary = parse_exposition(served(200)), parse_exposition(served(80, errors=20))
    verdict = judge(stable, canary, ERRORS)
    assert verdict.roll_back and verdict.judged
    assert "error ratio +0.1869 > 0.05" in verdict.message
    assert "canary: 107 requests from 1 pod(s)" in verdict.message
    assert "stable: 207 requests" in verdict.message
    # The same canary next to an equally bad stable version is within the threshold.
    assert not judge(parse_exposition(served(80, errors=20)), canary, ERRORS).roll_back


def test_a_slower_canary_is_rolled_back_on_p99() -> None:
    stable, canary = parse_exposition(served(200)), parse_exposition(served(200, slow=10))
    verdict = judge(stable, canary, LATENCY)
    assert verdict.roll_back and "p99 latency +" in verdict.message
    assert not judge(stable, parse_exposition(served(200)), LATENCY).roll_back
    assert not judge(stable, canary, ERRORS).roll_back  # slower but no error threshold asked


def test_too_few_requests_are_not_judged() -> None:
    stable, canary = parse_exposition(served(200)), parse_exposition(served(10, errors=30))
    verdict = judge(stable, canary, CanaryAnalysis(max_error_ratio_increase=0.05, min_requests=60))
    assert not verdict.roll_back and not verdict.judged
    assert verdict.message.startswith("waiting for 60 requests on canary")


def test_pods_add_up_and_an_unreadable_pod_is_left_out() -> None:
    pages = {"http://a/metrics": served(30), "http://b/metrics": served(30, errors=3)}

    def fetch(url: str) -> str:
        return pages[url]  # KeyError: that pod is gone

    total, failed = gather(["http://a/metrics", "http://b/metrics", "http://c/metrics"], fetch)
    assert (total.pods, total.requests, total.errors) == (2, 77, 3)
    assert failed == ["http://c/metrics"]


def test_metrics_urls_of_running_pods_and_the_kwok_seam() -> None:
    running = {"metadata": {}, "status": {"phase": "Running", "podIP": "10.0.0.7"}}
    assert pod_metrics_url(running, 8080, False) == "http://10.0.0.7:8080/metrics"
    v6 = {"status": {"phase": "Running", "podIP": "fd00::7"}}
    assert pod_metrics_url(v6, 8080, False) == "http://[fd00::7]:8080/metrics"
    assert pod_metrics_url({"status": {"phase": "Pending"}}, 8080, False) is None
    kwok = {"metadata": {"annotations": {KWOK_METRICS_URL: "http://127.0.0.1:9/metrics"}}}
    assert pod_metrics_url(kwok, 8080, True) == "http://127.0.0.1:9/metrics"
    assert pod_metrics_url(kwok, 8080, False) is None  # only test clusters honour it


def _no_fetch(url: str) -> str:
    raise AssertionError(f"{url} read although no analysis was due")


def test_the_analysis_runs_every_interval_and_a_rollback_holds_for_its_generation() -> None:
    pages = {"s": served(200), "c": served(80, errors=20)}
    pods = (["s"], ["c"])
    first = analyze_canary(ERRORS, 3, {}, pods, NOW, pages.__getitem__)
    assert first.rolled_back and first.condition is not None
    assert first.condition[:3] == ("Canary", False, ROLLED_BACK)
    assert first.split["rolledBackGeneration"] == 3
    assert first.split["canary"] == {"requests": 107, "errorRatio": 0.186916, "p99LatencyMs": 4.97}

    # The canary recovers, but the same generation stays rolled back without reading metrics.
    pages["c"] = served(2000, errors=20)
    later = NOW + timedelta(minutes=10)
    held = analyze_canary(ERRORS, 3, first.split, pods, later, _no_fetch)
    assert held.rolled_back and held.split == first.split
    # A new generation is judged again: now within the threshold.
    retried = analyze_canary(ERRORS, 4, first.split, pods, later, pages.__getitem__)
    assert not retried.rolled_back and "rolledBack" not in retried.split
    assert retried.condition is not None and retried.condition[:3] == (
        "Canary",
        True,
        "CanaryHealthy",
    )
    # Within the interval: nothing is read and the condition is left as it is.
    soon = analyze_canary(ERRORS, 4, retried.split, pods, later + timedelta(seconds=5), _no_fetch)
    assert not soon.rolled_back and soon.condition is None and soon.split == retried.split


def test_no_analysis_asked_reads_nothing() -> None:
    state = analyze_canary(None, 1, {}, (["s"], ["c"]), NOW, _no_fetch)
    assert state == type(state)(False, {}, None)
    assert TrackFigures().p99_ms() is None
