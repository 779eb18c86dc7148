"""HTTP access to the API server, bounded and resilient: every request has a timeout, passes
a client-side rate limit (QPS with a burst), and is retried on 429, 5xx and connection errors
with exponential backoff and jitter up to a cap; after that the caller gets ApiUnavailableError
(the reconciler reports `Degraded` and retries slowly). Other errors (404, 409, 422, 403, ...)
are answers, not outages, and are raised at once as ApiError.

Requests and responses are plain JSON (no client model classes: they cost CPU and memory at
scale). Authentication, TLS and the server address come from the kubernetes client's
configuration (kubeconfig or in-cluster)."""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import urllib3
from kubernetes import client as k8s

from neuraxis.operator.metrics import API_REQUESTS, API_RETRIES, API_SECONDS

log = logging.getLogger("neuraxis.operator")
Obj = dict[str, Any]

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
# Which kind the calling thread reconciles (a label of the request counter): requests per kind.
_context = threading.local()


@contextlib.contextmanager
def reconciling(kind: str) -> Iterator[None]:
    _context.kind = kind
    try:
        yield
    finally:
        _context.kind = ""


def current_kind() -> str:
    return str(getattr(_context, "kind", ""))


CONNECTION_ERROR = 0  # the status recorded when no HTTP answer came back


class ApiError(Exception):
    """An answer of the API server that is not a success (or no answer: status 0)."""

    def __init__(self, status: int, reason: str, message: str, method: str, path: str):
        super().__init__(f"{method} {path}: {status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.method = method
        self.path = path

    @property
    def retryable(self) -> bool:
        return self.status == CONNECTION_ERROR or self.status in RETRYABLE_STATUS

    def short(self) -> str:
        what = f"HTTP {self.status} {self.reason}" if self.status else self.reason
        return f"{self.method} {self.path}: {what}: {self.message}"[:1000]


class ApiUnavailableError(ApiError):
    """A retryable error that outlasted the retry policy."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: attempt n (from 0) waits a random time between half and
    all of min(cap, base * 2**n); a Retry-After the server sends is honoured up to the cap.
    `attempts` counts every try, the first included."""

    attempts: int = 6
    base_s: float = 0.2
    cap_s: float = 5.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.base_s <= 0 or self.cap_s < self.base_s:
            raise ValueError(f"retry policy needs attempts >= 1 and 0 < base <= cap: {self}")

    def delay(self, attempt: int, rng: random.Random, retry_after: float | None = None) -> float:
        ceiling = min(self.cap_s, self.base_s * 2**attempt)
        wait = rng.uniform(ceiling / 2, ceiling)
        if retry_after is not None and retry_after > 0:
            wait = max(wait, min(retry_after, self.cap_s))
        return wait

    def worst_case_s(self) -> float:
        """The longest a request can keep retrying (waits only, not the requests)."""
        return float(sum(min(self.cap_s, self.base_s * 2.0**n) for n in range(self.attempts - 1)))


class TokenBucket:
    """Client-side rate limit: `qps` tokens a second, at most `burst` saved up."""

    def __init__(
        self,
        qps: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if qps <= 0 or burst < 1:
            raise ValueError(f"rate limit needs qps > 0 and burst >= 1, got {qps}/{burst}")
        self.qps = qps
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst)
        self._stamp = clock()
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Take one token, waiting for it if needed; returns the seconds waited."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.qps)
            self._stamp = now
            self._tokens -= 1
            wait = -self._tokens / self.qps if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
        return wait


def _retry_after(headers: Any) -> float | None:
    try:
        return float(headers.get("Retry-After")) if headers else None
    except (TypeError, ValueError):
        return None


def _status_message(data: bytes) -> tuple[str, str]:
    """(reason, message) of a metav1.Status body, or the start of whatever came back."""
    try:
        body = json.loads(data)
    except ValueError:
        return "", data[:300].decode(errors="replace")
    if isinstance(body, dict):
        return str(body.get("reason") or ""), str(body.get("message") or "")
    return "", str(body)[:300]


class Kube:
    """Requests to one API server, with the limits and retries above."""

    def __init__(
        self,
        api_client: k8s.ApiClient,
        *,
        qps: float = 100.0,
        burst: int = 200,
        timeout_s: float = 10.0,
        retry: RetryPolicy | None = None,
        rng: random.Random | None = None,
    ):
        self.api_client = api_client
        self.pool = api_client.rest_client.pool_manager
        self.limiter = TokenBucket(qps, burst)
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self._rng = rng or random.Random()
        self._rng_lock = threading.Lock()

    # ---- one HTTP exchange --------------------------------------------------------------------
    def _prepare(
        self, method: str, path: str, query: dict[str, Any] | None
    ) -> tuple[str, dict[str, str]]:
        """The URL and headers (authentication included, refreshed tokens too)."""
        _method, url, headers, _body, _post = self.api_client.param_serialize(
            method,
            path,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        pairs = {
            k: str(v).lower() if isinstance(v, bool) else v
            for k, v in (query or {}).items()
            if v is not None
        }
        return (f"{url}?{urlencode(pairs)}" if pairs else url), dict(headers)

    def _once(
        self,
        method: str,
        path: str,
        query: dict[str, Any] | None,
        body: Any,
        content_type: str,
        timeout_s: float,
    ) -> tuple[int, Any, bytes]:
        url, headers = self._prepare(method, path, query)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        self.limiter.acquire()
        try:
            resp = self.pool.request(
                method,
                url,
                body=data,
                headers=headers,
                timeout=urllib3.Timeout(connect=min(5.0, timeout_s), read=timeout_s),
                retries=False,
            )
        except urllib3.exceptions.HTTPError as exc:
            return CONNECTION_ERROR, None, f"{type(exc).__name__}: {exc}".encode()
        return int(resp.status), resp.headers, bytes(resp.data)

    # ---- the public calls ---------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        verb: str | None = None,
        timeout_s: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> Obj:
        """The JSON answer of a successful request; ApiError for an error answer,
        ApiUnavailableError when a retryable error persisted through the retry policy."""
        policy = retry or self.retry
        labels = {"verb": verb or _verb(method, content_type), "resource": _resource_of(path)}
        for attempt in range(policy.attempts):
            started = time.monotonic()
            status, headers, data = self._once(
                method, path, query, body, content_type, timeout_s or self.timeout_s
            )
            API_SECONDS.labels(**labels).observe(time.monotonic() - started)
            API_REQUESTS.labels(**labels, code=str(status), kind=current_kind()).inc()
            if 200 <= status < 300:
                return json.loads(data) if data else {}
            reason, message = _status_message(data)
            error = ApiError(status, reason or _default_reason(status), message, method, path)
            if not error.retryable:
                raise error
            if attempt + 1 == policy.attempts:
                raise ApiUnavailableError(error.status, error.reason, error.message, method, path)
            with self._rng_lock:
                wait = policy.delay(attempt, self._rng, _retry_after(headers))
            API_RETRIES.labels(**labels).inc()
            log.debug("%s; retry %d in %.2fs", error.short(), attempt + 1, wait)
            time.sleep(wait)
        raise AssertionError("unreachable")  # the loop returns or raises

    def watch_lines(self, path: str, query: dict[str, Any], read_timeout_s: float) -> Iterator[Obj]:
        """The events of one watch request, until the server ends it; ApiError when it cannot
        start (410 Gone included), no retry (the informer decides)."""
        url, headers = self._prepare("GET", path, {**query, "watch": True})
        self.limiter.acquire()
        labels = {"verb": "watch", "resource": _resource_of(path)}
        try:
            resp = self.pool.request(
                "GET",
                url,
                headers=headers,
                timeout=urllib3.Timeout(connect=5.0, read=read_timeout_s),
                retries=False,
                preload_content=False,
            )
        except urllib3.exceptions.HTTPError as exc:
            API_REQUESTS.labels(**labels, code=str(CONNECTION_ERROR), kind="").inc()
            raise ApiError(CONNECTION_ERROR, type(exc).__name__, str(exc), "GET", path) from exc
        API_REQUESTS.labels(**labels, code=str(resp.status), kind="").inc()
        try:
            if resp.status != 200:
                reason, message = _status_message(resp.read())
                reason = reason or _default_reason(resp.status)
                raise ApiError(resp.status, reason, message, "GET", path)
            buffer = b""
            for chunk in resp.stream(64 * 1024, decode_content=True):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ApiError(CONNECTION_ERROR, type(exc).__name__, str(exc), "GET", path) from exc
        finally:
            resp.release_conn()


def _default_reason(status: int) -> str:
    return {0: "ConnectionError", 429: "TooManyRequests"}.get(status, "Error")


def _verb(method: str, content_type: str) -> str:
    if method == "PATCH":
        return "apply" if content_type == APPLY_PATCH else "patch"
    names = {"GET": "get", "POST": "create", "PUT": "update", "DELETE": "delete"}
    return names.get(method, method.lower())


def _resource_of(path: str) -> str:
    """`jobs`, `datasets/status`, ... from an API path."""
    parts = [p for p in path.split("/") if p]
    if "namespaces" in parts:
        i = parts.index("namespaces")
        rest = parts[i + 2 :] if len(parts) > i + 2 else ["namespaces"]
    else:
        rest = parts[2:] if parts and parts[0] == "api" else parts[3:]
    if not rest:
        return "?"
    return rest[0] if len(rest) < 3 else f"{rest[0]}/{rest[2]}"


APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"
