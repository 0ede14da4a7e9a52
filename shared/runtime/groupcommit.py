"""Group commit: writes that arrive together share one transaction, and each caller is
answered after that commit.

An async route hands its handler to `GroupCommit.submit`; a writer thread takes every
write waiting, runs them one after another in one unit of work (each in the context of
its own request, so its events carry its trace and cause), commits once and answers them
all. One commit per group instead of per request is what PostgreSQL's WAL and Kafka's
`linger.ms` do for the same reason. A write that raises is answered with its error; the
others of its group are then run again, each in a transaction of its own, so that one
refused request never undoes another.

`submit_each(batch, value)` is the set-based form: the group's values for one `batch`
function reach it together, as `Item`s, in one call, so that a whole group costs one
statement per table rather than one per request. The batch answers each item with its
result or the DomainError that refused it (having written nothing for that one); the
others commit all the same. A batch that raises is run again one item at a time."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from shared.errors import DomainError
from shared.messaging.unit_of_work import Unit, UnitOfWork

log = logging.getLogger(__name__)

T = TypeVar("T")
A = TypeVar("A")


@dataclass(frozen=True, slots=True)
class Item(Generic[A]):
    """One request's part of a set-based write: its value, and the request's context (its
    trace and cause), which `within` runs a callable in, so that what it emits is its own."""

    value: A
    context: contextvars.Context

    def within(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        return self.context.run(fn, *args, **kwargs)


Batch = Callable[[Unit, Sequence[Item[A]]], Sequence[T | DomainError]]
"""A set-based write: each item's result, or the DomainError that refused it, in order."""


@dataclass(slots=True)
class _Write:
    run: Callable[[Unit], Any] | None
    context: contextvars.Context
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    batch: Batch[Any, Any] | None = None
    value: Any = None


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

    async def submit_each(self, batch: Batch[A, T], value: A) -> T:
        """Hand `value` to `batch` with the others of the next group; its result once
        committed (its DomainError raised, if the batch refused it)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        context = contextvars.copy_context()
        self._queue.put(_Write(None, context, future, loop, batch, value))
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
                results = _run(unit, group)
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
            if write.batch is not None and isinstance(result, DomainError):
                _answer(write, error=result)
            else:
                _answer(write, result=result)


def _run(unit: Unit, group: list[_Write]) -> list[Any]:
    """Each write's result, in order: plain writes one by one, each batch's items in one
    call of it."""
    results: list[Any] = [None] * len(group)
    batches: dict[Batch[Any, Any], list[int]] = {}
    for i, write in enumerate(group):
        if write.batch is not None:
            batches.setdefault(write.batch, []).append(i)
        else:
            assert write.run is not None
            results[i] = write.context.run(write.run, unit)
    for batch, chosen in batches.items():
        answers = batch(unit, [Item(group[i].value, group[i].context) for i in chosen])
        if len(answers) != len(chosen):
            raise RuntimeError(f"{batch!r} answered {len(answers)} of {len(chosen)} items")
        for i, answer in zip(chosen, answers, strict=True):
            results[i] = answer
    return results


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
