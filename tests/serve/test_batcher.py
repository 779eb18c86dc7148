"""The dynamic batcher, with a real forward function running in its worker thread."""

from __future__ import annotations

import asyncio
import threading

import pytest

from neuraxis.workloads.serve.batcher import Batcher, plan_batch


def test_plan_batch_fills_up_to_the_limit_and_runs_an_oversized_request_alone() -> None:
    assert plan_batch([1, 1, 1], 2) == 2
    assert plan_batch([3, 1], 2) == 1
    assert plan_batch([1, 4], 8) == 2
    assert plan_batch([2, 2, 2, 2, 2], 8) == 4


def test_requests_queued_during_a_forward_run_together_next() -> None:
    calls: list[int] = []
    first_running = threading.Event()
    release = threading.Event()

    def run_batch(rows: list[list[float]]) -> list[float]:
        calls.append(len(rows))
        if len(calls) == 1:
            first_running.set()
            release.wait(30)
        return [sum(r) for r in rows]

    async def scenario() -> list[list[float]]:
        batcher: Batcher[float] = Batcher(run_batch, max_batch_size=8, max_wait_s=0.0)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit([[1.0, 1.0]]))
        await asyncio.to_thread(first_running.wait, 30)
        rest = [asyncio.ensure_future(batcher.submit([[float(i), 0.0]])) for i in range(10)]
        await asyncio.sleep(0)
        release.set()
        results = await asyncio.gather(first, *rest)
        await batcher.stop()
        return results

    results = asyncio.run(scenario())
    assert results == [[2.0]] + [[float(i)] for i in range(10)]
    assert calls == [1, 8, 2]  # 10 queued rows: one full batch of 8, then the 2 left


def test_a_lone_request_does_not_wait_for_the_batch_window() -> None:
    async def scenario() -> list[float]:
        # A 60 s window: the test would hang if a lone request waited for it.
        batcher: Batcher[float] = Batcher(
            lambda rows: [r[0] for r in rows], max_batch_size=32, max_wait_s=60.0
        )
        batcher.start()
        out = await asyncio.wait_for(batcher.submit([[3.0]]), 30)
        await batcher.stop()
        return out

    assert asyncio.run(scenario()) == [3.0]


def test_the_window_waits_for_requests_still_arriving() -> None:
    sizes: list[int] = []

    def run_batch(rows: list[list[float]]) -> list[float]:
        sizes.append(len(rows))
        return [r[0] for r in rows]

    async def scenario() -> list[list[float]]:
        batcher: Batcher[float] = Batcher(run_batch, max_batch_size=32, max_wait_s=60.0)
        batcher.start()
        arrival = batcher.arriving()
        arrival.__enter__()  # a second request is still being read
        first = asyncio.ensure_future(batcher.submit([[1.0]]))
        await asyncio.sleep(0.05)
        arrival.__exit__(None, None, None)
        second = asyncio.ensure_future(batcher.submit([[2.0]]))
        results = await asyncio.wait_for(asyncio.gather(first, second), 30)
        await batcher.stop()
        return list(results)

    assert asyncio.run(scenario()) == [[1.0], [2.0]]
    assert sizes == [2]


def test_a_failing_forward_fails_only_its_batch() -> None:
    def run_batch(rows: list[list[float]]) -> list[float]:
        if rows[0][0] < 0:
            raise ValueError("negative")
        return [r[0] for r in rows]

    async def scenario() -> list[float]:
        batcher: Batcher[float] = Batcher(run_batch, max_batch_size=1, max_wait_s=0.0)
        batcher.start()
        with pytest.raises(ValueError, match="negative"):
            await batcher.submit([[-1.0]])
        out = await batcher.submit([[5.0]])
        await batcher.stop()
        return out

    assert asyncio.run(scenario()) == [5.0]
