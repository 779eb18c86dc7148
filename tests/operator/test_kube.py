"""The API client's bounds: retries with backoff and jitter on 429, 5xx and lost answers, up to
a cap; other errors at once; a timeout on every request; a rate limit. Against a real HTTP
server on loopback that answers as scripted (no client code is replaced)."""

from __future__ import annotations

import itertools
import json
import random
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubernetes import client as k8s

from neuraxis.operator.caches import TTLCache
from neuraxis.operator.kube import (
    ApiError,
    ApiUnavailableError,
    Kube,
    RetryPolicy,
    TokenBucket,
)

FAST = RetryPolicy(attempts=4, base_s=0.05, cap_s=0.2)


class Script:
    """What the server answers, in order (the last answer repeats), and what it saw."""

    def __init__(self, *answers: tuple[int, dict[str, str], float]):
        self.answers = list(answers)
        self.seen: list[tuple[str, str, float]] = []
        self.lock = threading.Lock()

    def next(self, method: str, path: str) -> tuple[int, dict[str, str], float]:
        with self.lock:
            self.seen.append((method, path, time.monotonic()))
            return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


@pytest.fixture
def server() -> Iterator[tuple[str, list[Script]]]:
    holder: list[Script] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            status, headers, delay = holder[0].next(self.command, self.path)
            time.sleep(delay)
            body = json.dumps(
                {"kind": "Status", "reason": "Scripted", "message": f"answer {status}"}
                if status >= 300
                else {"kind": "Thing", "metadata": {"name": "x"}}
            ).encode()
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._answer()

        def do_POST(self) -> None:
            self._answer()

        def do_PATCH(self) -> None:
            self._answer()

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", holder
    finally:
        httpd.shutdown()
        httpd.server_close()


def kube_for(url: str, **kwargs: Any) -> Kube:
    config = k8s.Configuration(host=url)
    return Kube(k8s.ApiClient(config), rng=random.Random(1), **kwargs)


def test_backoff_grows_to_the_cap_with_jitter() -> None:
    policy = RetryPolicy(attempts=8, base_s=0.1, cap_s=2.0)
    rng = random.Random(3)
    for attempt in range(8):
        ceiling = min(2.0, 0.1 * 2**attempt)
        waits = [policy.delay(attempt, rng) for _ in range(200)]
        assert all(ceiling / 2 <= w <= ceiling for w in waits), attempt
        assert len({round(w, 6) for w in waits}) > 150  # jittered, not one fixed value
    assert policy.delay(7, rng) <= 2.0
    assert policy.worst_case_s() == pytest.approx(0.1 + 0.2 + 0.4 + 0.8 + 1.6 + 2.0 + 2.0)


def test_retry_after_is_honoured_up_to_the_cap() -> None:
    policy = RetryPolicy(attempts=3, base_s=0.1, cap_s=2.0)
    rng = random.Random(0)
    assert policy.delay(0, rng, retry_after=1.5) == 1.5
    assert policy.delay(0, rng, retry_after=60) == 2.0


def test_a_bad_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="attempts >= 1"):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError, match="base <= cap"):
        RetryPolicy(base_s=5, cap_s=1)


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_transient_answers_are_retried_until_one_succeeds(
    server: tuple[str, list[Script]], status: int
) -> None:
    url, holder = server
    holder.append(Script((status, {}, 0), (status, {}, 0), (200, {}, 0)))
    found = kube_for(url, retry=FAST).request("GET", "/api/v1/namespaces/ml/pods/x")
    assert found["metadata"]["name"] == "x"
    stamps = [t for _, _, t in holder[0].seen]
    assert len(stamps) == 3
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert gaps[0] >= 0.025 and gaps[1] >= 0.05  # backed off: at least half of base * 2**n


def test_a_persistent_outage_ends_in_api_unavailable_after_the_attempts(
    server: tuple[str, list[Script]],
) -> None:
    url, holder = server
    holder.append(Script((503, {}, 0)))
    started = time.monotonic()
    with pytest.raises(ApiUnavailableError) as caught:
        kube_for(url, retry=FAST).request("PATCH", "/apis/batch/v1/namespaces/ml/jobs/j", body={})
    assert len(holder[0].seen) == FAST.attempts
    assert time.monotonic() - started <= FAST.worst_case_s() + 1.0
    assert caught.value.status == 503 and "answer 503" in caught.value.short()
    assert "PATCH /apis/batch/v1/namespaces/ml/jobs/j" in caught.value.short()


@pytest.mark.parametrize("status", [400, 403, 404, 409, 422])
def test_answers_that_are_not_outages_are_not_retried(
    server: tuple[str, list[Script]], status: int
) -> None:
    url, holder = server
    holder.append(Script((status, {}, 0)))
    with pytest.raises(ApiError) as caught:
        kube_for(url, retry=FAST).request("POST", "/api/v1/namespaces/ml/configmaps", body={})
    assert not isinstance(caught.value, ApiUnavailableError)
    assert caught.value.status == status and len(holder[0].seen) == 1


def test_a_slow_answer_times_out_and_counts_as_an_outage(
    server: tuple[str, list[Script]],
) -> None:
    url, holder = server
    holder.append(Script((200, {}, 1.0)))
    kube = kube_for(url, retry=RetryPolicy(attempts=2, base_s=0.05, cap_s=0.05), timeout_s=0.2)
    started = time.monotonic()
    with pytest.raises(ApiUnavailableError) as caught:
        kube.request("GET", "/api/v1/nodes")
    assert caught.value.status == 0 and "ReadTimeout" in caught.value.short()
    assert time.monotonic() - started < 1.0  # two 0.2 s timeouts, not two 1 s answers


def test_no_server_at_all_is_an_outage_too() -> None:
    with pytest.raises(ApiUnavailableError) as caught:
        kube_for("http://127.0.0.1:9", retry=FAST).request("GET", "/api/v1/nodes")
    assert caught.value.status == 0


def test_the_rate_limit_allows_a_burst_then_qps() -> None:
    bucket = TokenBucket(qps=50, burst=5)
    started = time.monotonic()
    for _ in range(5):
        assert bucket.acquire() == 0.0
    for _ in range(10):
        bucket.acquire()
    elapsed = time.monotonic() - started
    assert 0.17 <= elapsed <= 0.6  # 10 tokens at 50/s after the burst: 0.2 s


def test_ttl_cache_is_bounded_and_forgets_old_entries() -> None:
    now = [0.0]
    cache: TTLCache[str, int] = TTLCache(maxsize=3, ttl_s=10, clock=lambda: now[0])
    for i, key in enumerate("abcd"):
        cache.put(key, i)
    assert len(cache) == 3 and cache.get("a") is None  # least recently used went first
    now[0] = 5.0
    assert cache.get("b") == 1
    now[0] = 11.0
    assert cache.get("c") is None and len(cache) == 2  # 11 s old: expired
