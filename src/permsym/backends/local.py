"""Executors on this machine: in process (serial) and a bounded process pool."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from typing import Any

from permsym.backends.base import Executor

__all__ = ["ProcessExecutor", "SerialExecutor"]


class SerialExecutor(Executor):
    """Run units one after another in this process, in submission order.

    Units run lazily inside :meth:`as_completed`, so the driver can write each result before
    the next unit starts (a killed run loses at most the unit in progress).
    """

    name = "serial"
    torch_threads = None

    def __init__(self) -> None:
        self._queue: list[tuple[int, Callable[..., Any], tuple[Any, ...]]] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> int:
        ticket = len(self._queue)
        self._queue.append((ticket, fn, args))
        return ticket

    def as_completed(self) -> Iterator[tuple[int, Any]]:
        queue, self._queue = self._queue, []
        for ticket, fn, args in queue:
            yield ticket, fn(*args)


class ProcessExecutor(Executor):
    """A pool of ``jobs`` worker processes; each unit uses one torch thread."""

    name = "process"
    torch_threads = 1

    def __init__(self, jobs: int) -> None:
        self.jobs = jobs
        self._pool: ProcessPoolExecutor | None = None
        self._futures: dict[Future[Any], int] = {}

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> int:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self.jobs)
        ticket = len(self._futures)
        self._futures[self._pool.submit(fn, *args)] = ticket
        return ticket

    def as_completed(self) -> Iterator[tuple[int, Any]]:
        futures, self._futures = self._futures, {}
        for future in as_completed(futures):
            yield futures[future], future.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
