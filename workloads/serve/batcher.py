"""Dynamic batching: concurrent requests are gathered into one forward pass.

A batch closes when it holds `max_batch_size` rows or `max_wait_s` has passed since its first
request. The wait only applies while more requests are known to be on their way (their bodies
are being read): when the queue holds everything there is, waiting cannot grow the batch, so it
runs at once and a lone request pays no batching delay. The forward runs in one worker thread so
the event loop keeps accepting and parsing requests meanwhile; those queue up for the next batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Row = list[float]
Out = TypeVar("Out")


@dataclass
class _Pending(Generic[Out]):
    rows: list[Row]
    future: asyncio.Future[list[Out]] = field(repr=False)


def plan_batch(queued: list[int], max_batch_size: int) -> int:
    """How many queued requests (given their row counts) go into the next batch: as many as fit
    in `max_batch_size` rows, and always at least one (an oversized request runs alone)."""
    taken, rows = 0, 0
    for n in queued:
        if taken and rows + n > max_batch_size:
            break
        taken, rows = taken + 1, rows + n
    return taken


class Batcher(Generic[Out]):
    """Collects rows from concurrent `submit` calls and runs `run_batch` on them together.

    `run_batch(rows) -> outputs` (one output per row) runs in a dedicated worker thread;
    `on_batch(n_rows)` is called after each batch (metrics), `on_forward(n_rows, seconds)` with
    the forward's duration (an adaptive batch size sets `max_batch_size` from it)."""

    def __init__(
        self,
        run_batch: Callable[[list[Row]], list[Out]],
        max_batch_size: int,
        max_wait_s: float,
        on_batch: Callable[[int], None] = lambda n: None,
        on_forward: Callable[[int, float], None] = lambda n, s: None,
    ):
        if max_batch_size < 1 or max_wait_s < 0:
            raise ValueError("max_batch_size must be >= 1 and max_wait_s >= 0")
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._on_batch = on_batch
        self._on_forward = on_forward
        self._queue: list[_Pending[Out]] = []
        self._wakeup = asyncio.Event()
        self._arriving = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forward")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    async def stop(self) -> None:
        """Finish every queued request, then stop the loop and the worker thread."""
        while self._queue:
            await asyncio.sleep(0.001)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Mark a request as on its way (body being read) while the block runs; leave the block
        before calling `submit`."""
        self._arriving += 1
        self._wakeup.set()
        try:
            yield
        finally:
            self._arriving -= 1
            self._wakeup.set()

    async def submit(self, rows: list[Row]) -> list[Out]:
        """Queue `rows` and wait for their outputs (in the same order)."""
        future: asyncio.Future[list[Out]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(rows, future))
        self._wakeup.set()
        return await future

    async def _wait(self, timeout: float) -> None:
        self._wakeup.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout)

    def _queued_rows(self) -> int:
        return sum(len(p.rows) for p in self._queue)

    def depth(self) -> int:
        """Rows waiting for a forward plus requests whose bodies are still being read."""
        return self._queued_rows() + self._arriving

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            deadline = loop.time() + self.max_wait_s
            # Callers leave `arriving` right before `submit` (no await in between), so the
            # count is of requests not yet queued.
            while (
                self._queued_rows() < self.max_batch_size
                and self._arriving > 0
                and loop.time() < deadline
            ):
                await self._wait(deadline - loop.time())
            taken = plan_batch([len(p.rows) for p in self._queue], self.max_batch_size)
            batch, self._queue = self._queue[:taken], self._queue[taken:]
            rows = [row for pending in batch for row in pending.rows]
            started = time.perf_counter()
            try:
                outputs = await loop.run_in_executor(self._executor, self._run_batch, rows)
                if len(outputs) != len(rows):
                    raise RuntimeError(f"run_batch returned {len(outputs)} outputs for {len(rows)}")
            except Exception as exc:
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
                continue
            self._on_batch(len(rows))
            self._on_forward(len(rows), time.perf_counter() - started)
            start = 0
            for pending in batch:
                end = start + len(pending.rows)
                if not pending.future.done():  # the client may have gone away
                    pending.future.set_result(outputs[start:end])
                start = end
