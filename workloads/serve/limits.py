"""Load limits: back-pressure instead of an unbounded queue, and a batch size that follows the
measured forward latency.

- `ConcurrencyLimit` (ASGI middleware) admits at most `max_in_flight` prediction requests at a
  time; the next one is answered 429 with `Retry-After` at once, so a client backs off instead
  of waiting in a queue that only grows (an edge node has a fixed CPU: queueing past its
  throughput only adds latency). Health, readiness and /metrics are never limited.
- `AdaptiveBatchSize` is AIMD on the batcher's maximum batch size: a forward slower than the
  latency target shrinks it in proportion to the overshoot, at most by half (multiplicative
  decrease), a full batch that met the target raises it by one (additive increase). Under light
  load batches are small anyway; under heavy load the size settles where one forward takes about
  the target, the largest batch (best throughput) that keeps the latency bound.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

# Routes that run the model: the only ones counted against the limit.
_LIMITED_SUFFIXES = (":predict", ":explain", "/infer")


def is_limited_path(path: str) -> bool:
    return path.endswith(_LIMITED_SUFFIXES)


def too_many_body(in_flight: int, limit: int) -> bytes:
    reason = f"{in_flight} in flight, the limit is {limit}; retry later"
    body = {"error": f"requests: {reason}", "field": "requests", "reason": reason}
    return json.dumps(body).encode()


class ConcurrencyLimit:
    """Answers 429 (Retry-After) to prediction requests beyond `max_in_flight` at once."""

    def __init__(self, app: ASGIApp, max_in_flight: int, retry_after_s: int = 1):
        if max_in_flight < 1 or retry_after_s < 1:
            raise ValueError("max_in_flight and retry_after_s must be >= 1")
        self.app = app
        self.max_in_flight = max_in_flight
        self.retry_after_s = retry_after_s
        self.in_flight = 0  # only touched on the event loop: no lock needed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_limited_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight:
            body = too_many_body(self.in_flight, self.max_in_flight)
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(self.retry_after_s).encode()),
            ]
            await send({"type": "http.response.start", "status": 429, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


@dataclass(frozen=True)
class AdaptiveConfig:
    latency_target_s: float
    min_batch_size: int = 1
    max_batch_size: int = 32

    def __post_init__(self) -> None:
        if not (self.latency_target_s > 0 and 1 <= self.min_batch_size <= self.max_batch_size):
            raise ValueError("need latency_target_s > 0 and 1 <= min_batch_size <= max_batch_size")


def next_batch_size(size: int, rows: int, seconds: float, config: AdaptiveConfig) -> int:
    """One AIMD step: the new maximum batch size after a forward of `rows` rows that took
    `seconds` while the maximum was `size`."""
    if seconds > config.latency_target_s:
        # Shrink in proportion to the overshoot (10% over: 10% smaller), at least by one row and
        # at most by half: one slow forward (a noisy neighbour on the CPU) cannot collapse it.
        scaled = int(size * config.latency_target_s / seconds)
        return max(config.min_batch_size, min(size - 1, max(size // 2, scaled)))
    if rows >= size:  # only a full batch says a larger one was wanted
        return min(config.max_batch_size, size + 1)
    return size


class AdaptiveBatchSize:
    """The current maximum batch size, updated after every forward (from the worker thread or
    the event loop: a lock keeps the read-modify-write whole)."""

    def __init__(self, config: AdaptiveConfig):
        self.config = config
        # Start in the middle (geometric): neither the slowest nor the riskiest batch first.
        self.size = max(
            config.min_batch_size, int(math.sqrt(config.min_batch_size * config.max_batch_size))
        )
        self._lock = threading.Lock()

    def observe(self, rows: int, seconds: float) -> int:
        with self._lock:
            self.size = next_batch_size(self.size, rows, seconds, self.config)
            return self.size
