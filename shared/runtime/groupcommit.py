"""Group commit: writes that arrive together share one transaction, and each caller is
answered after that commit.

An async route hands its handler to `GroupCommit.submit`; a writer thread takes every
write waiting, runs them one after another in one unit of work (each in the context of
its own request, so its events carry its trace and cause), commits once and answers them
all. One commit per group instead of per request is what PostgreSQL's WAL and Kafka's
`linger.ms` do for the same reason. A write that raises is answered with its error; the
others of its group are then run again, each in a transaction of its own, so that one
refused request never undoes another."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from shared.messaging.unit_of_work import Unit, UnitOfWork

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(slots=True)
class _Write:
    run: Callable[[Unit], Any]
    context: contextvars.Context
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


class GroupCommit:
    def __init__(self, uow: UnitOfWork, *, max_group: int = 500, name: str = "writes") -> None:
        self._uow = uow
        self._max = max_group
        self._queue: queue.SimpleQueue[_Write | None] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._serve, name=f"group-commit-{name}", daemon=True
        )
        self.groups = 0
        self.writes = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10) -> None:
        """Finish what was submitted, then end the writer thread."""
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    async def submit(self, write: Callable[[Unit], T]) -> T:
        """Run `write(unit)` in the next group's transaction; its result once committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Write(write, contextvars.copy_context(), future, loop))
        return await future

    def _serve(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            while len(group) < self._max:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)  # stop after this group
                    break
                group.append(more)
            self._commit(group)

    def _commit(self, group: list[_Write]) -> None:
        try:
            with self._uow() as unit:
                results = [write.context.run(write.run, unit) for write in group]
        except Exception as exc:
            if len(group) == 1:
                _answer(group[0], error=exc)
                return
            for write in group:  # one at a time: the culprit fails alone
                self._commit([write])
            return
        self.groups += 1
        self.writes += len(group)
        for write, result in zip(group, results, strict=True):
            _answer(write, result=result)


def _answer(write: _Write, result: Any = None, error: BaseException | None = None) -> None:
    def settle() -> None:
        if write.future.done():  # the caller went away (cancelled)
            return
        if error is not None:
            write.future.set_exception(error)
        else:
            write.future.set_result(result)

    try:
        write.loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the loop is closed: nobody is waiting
        log.debug("group commit: answer after the loop closed")
