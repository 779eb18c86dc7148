"""The reconcile queue: keys (kind, namespace, name), each at most once in the queue and handed
to one worker at a time; a key added while it is being worked on runs again afterwards. A key
added with a delay waits (child events are debounced: a burst of them reconciles the owner
once); adding it again sooner moves it forward, never back."""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._heap: list[tuple[float, int, K]] = []
        self._due: dict[K, float] = {}  # queued keys and when they are due
        self._active: set[K] = set()  # being worked on
        self._again: dict[K, float] = {}  # added while active: due again after done()
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False

    def add(self, key: K, delay: float = 0.0) -> None:
        with self._cond:
            due = self._clock() + max(0.0, delay)
            if key in self._active:
                self._again[key] = min(due, self._again.get(key, due))
                return
            if key in self._due and self._due[key] <= due:
                return
            self._due[key] = due
            heapq.heappush(self._heap, (due, next(self._seq), key))
            self._cond.notify()

    def get(self, timeout: float | None = None) -> K | None:
        """The next due key (now active), or None when the queue is closed or the timeout
        passes."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            while not self._closed:
                now = self._clock()
                while self._heap:
                    due, _, key = self._heap[0]
                    if self._due.get(key) != due:
                        heapq.heappop(self._heap)  # superseded by an earlier add
                        continue
                    if due > now:
                        break
                    heapq.heappop(self._heap)
                    del self._due[key]
                    self._active.add(key)
                    return key
                wait = self._heap[0][0] - now if self._heap else None
                if deadline is not None:
                    left = deadline - now
                    if left <= 0:
                        return None
                    wait = left if wait is None else min(wait, left)
                self._cond.wait(wait)
            return None

    def done(self, key: K) -> None:
        with self._cond:
            self._active.discard(key)
            again = self._again.pop(key, None)
        if again is not None:
            self.add(key, max(0.0, again - self._clock()))

    def forget(self, key: K) -> None:
        """Drop a queued key (its object is gone)."""
        with self._cond:
            self._due.pop(key, None)
            self._again.pop(key, None)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._due)

    def active(self) -> int:
        with self._cond:
            return len(self._active)
