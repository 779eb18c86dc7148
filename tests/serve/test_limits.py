"""Load limits of the server: 429 back-pressure with Retry-After beyond the in-flight limit, and
a batch size that adapts (AIMD) to the measured forward latency."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from neuraxis.lake import Lake
from neuraxis.workloads.serve.app import ServeConfig, build_app
from neuraxis.workloads.serve.limits import (
    AdaptiveBatchSize,
    AdaptiveConfig,
    ConcurrencyLimit,
    next_batch_size,
)
from neuraxis.workloads.serve.metrics import ServeMetrics
from neuraxis.workloads.serve.model_loader import LoadedModel, load_model
from neuraxis.workloads.serve.runtime import BatchingConfig, ModelSlot

from .conftest import TinyClassifier, metric_value, write_model

ROW = [70.0, 0.5, 1.0]


@pytest.fixture
def tiny_model(tmp_path: Path) -> LoadedModel:
    lake = Lake(str(tmp_path / "lake"))
    write_model(lake, "models/default/tiny/v1", TinyClassifier(seed=1), "v1")
    return load_model(f"file://{tmp_path}/lake/models/default/tiny/v1", name="tiny")


# ---- AIMD -------------------------------------------------------------------------------------
def test_aimd_halves_on_a_slow_forward_and_grows_by_one_on_a_full_fast_batch() -> None:
    config = AdaptiveConfig(latency_target_s=0.010, min_batch_size=2, max_batch_size=64)
    assert next_batch_size(32, 32, 0.020, config) == 16  # twice too slow: half
    assert next_batch_size(32, 32, 0.011, config) == 29  # 10% too slow: 10% smaller
    assert next_batch_size(32, 32, 0.0101, config) == 31  # barely: still one row less
    assert next_batch_size(32, 32, 1.0, config) == 16  # a spike: never more than half
    assert next_batch_size(3, 3, 0.020, config) == 2  # never below the floor
    assert next_batch_size(32, 32, 0.005, config) == 33  # full and fast: one more
    assert next_batch_size(32, 5, 0.005, config) == 32  # not full: no evidence for more
    assert next_batch_size(64, 64, 0.001, config) == 64  # never above the ceiling
    with pytest.raises(ValueError):
        AdaptiveConfig(latency_target_s=0.01, min_batch_size=8, max_batch_size=4)


def test_adaptive_size_settles_where_a_forward_takes_about_the_target() -> None:
    # A forward that costs 1 ms per row, always full (heavy load), target 16 ms: the size
    # saw-tooths between half the target size and the target size, whatever it started at.
    for start_max in (4096, 20):
        adaptive = AdaptiveBatchSize(AdaptiveConfig(0.016, 1, start_max))
        sizes = []
        for _ in range(300):
            size = adaptive.size
            sizes.append(adaptive.observe(size, 0.001 * size))
        assert min(sizes[-50:]) >= 8 and max(sizes[-50:]) <= 17, sizes[-50:]


def test_a_slot_with_a_latency_target_shrinks_batches_a_forward_cannot_meet(
    tiny_model: LoadedModel,
) -> None:
    forwards: list[tuple[int, float]] = []
    # 1 us: no forward through a worker thread is that fast: every one halves the size.
    batching = BatchingConfig(max_batch_size=64, latency_target_ms=0.001, min_batch_size=2)

    async def scenario() -> int:
        slot = ModelSlot(batching, ServeMetrics(), on_forward=lambda n, s: forwards.append((n, s)))
        await slot.install(tiny_model)
        assert slot.current is not None
        batcher = slot.current.batcher
        assert batcher.max_batch_size == 11  # starts at the geometric middle of 2..64
        for _ in range(6):
            await batcher.submit([ROW])
        size = batcher.max_batch_size
        await slot.close()
        return size

    assert asyncio.run(scenario()) == 2
    assert [n for n, _ in forwards] == [1] * 6 and all(s > 0 for _, s in forwards)


# ---- back-pressure ----------------------------------------------------------------------------
def test_requests_beyond_the_in_flight_limit_get_429_with_retry_after(
    tiny_model: LoadedModel,
) -> None:
    """Two predictions hold the model (their forward waits on an event); the third is refused
    at once, health and metrics still answer, and once the two finish the next one is served."""
    release = threading.Event()
    entered = threading.Semaphore(0)

    def hold(model: LoadedModel, rows: list[list[float]], outputs: list[Any]) -> None:
        entered.release()
        release.wait(30)

    metrics = ServeMetrics()
    # One row per forward: each held request is its own batch.
    batching = BatchingConfig(max_batch_size=1, max_batch_wait_ms=0)
    config = ServeConfig(batching, max_in_flight=2, retry_after_s=7)
    slot = ModelSlot(batching, metrics, on_predictions=hold)
    app = build_app(tiny_model, config, metrics, slot)
    body = {"instances": [ROW]}

    async def scenario() -> None:
        await slot.install(tiny_model)  # what the lifespan does (the transport runs none)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
            url = "/v1/models/tiny:predict"
            held = [asyncio.create_task(client.post(url, json=body)) for _ in range(2)]
            await asyncio.to_thread(entered.acquire, True, 30)  # the first is in its forward
            while limit.in_flight < 2:  # the second is admitted (queued behind the first)
                await asyncio.sleep(0.01)
            refused = await client.post(url, json=body)
            assert refused.status_code == 429
            assert refused.headers["retry-after"] == "7"
            assert refused.json() == {
                "error": "requests: 2 in flight, the limit is 2; retry later",
                "field": "requests",
                "reason": "2 in flight, the limit is 2; retry later",
            }
            v2 = await client.post("/v2/models/tiny/infer", json={"inputs": []})
            assert v2.status_code == 429  # every model route counts
            assert (await client.get("/readyz")).status_code == 200
            assert (await client.get("/metrics")).status_code == 200
            release.set()
            assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
            assert (await client.post(url, json=body)).status_code == 200
            text = (await client.get("/metrics")).text
            route = "/v1/models/{name}:predict"
            assert metric_value(text, "neuraxis_serve_requests_total", route=route, code="429")
        await slot.close()

    limit = _find_limit(app)
    asyncio.run(scenario())


def _find_limit(app: Any) -> ConcurrencyLimit:
    inner = app.app.app  # MetricsMiddleware -> AuthMiddleware -> ConcurrencyLimit
    assert isinstance(inner, ConcurrencyLimit)
    return inner


def test_limit_values_below_one_are_refused() -> None:
    async def noop(scope: Any, receive: Any, send: Any) -> None:
        return None

    with pytest.raises(ValueError):
        ConcurrencyLimit(noop, 0)
    with pytest.raises(ValueError):
        ConcurrencyLimit(noop, 1, retry_after_s=0)
