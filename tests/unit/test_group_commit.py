"""Group commit without a server: concurrent writes, one transaction per group."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

import pytest
from sqlalchemy import Engine, String, func, select
from sqlalchemy.orm import Mapped, mapped_column

from shared.errors import DomainError
from shared.messaging.unit_of_work import Unit, UnitOfWork
from shared.runtime.groupcommit import GroupCommit, Item
from shared.storage.db import make_sessions
from tests.schema import Base, Outbox

pytestmark = pytest.mark.unit


class Written(Base):
    __tablename__ = "group_commit_written"

    name: Mapped[str] = mapped_column(String(16), primary_key=True)


class Refused(Exception):
    pass


@pytest.fixture
def uow(sqlite_engine: Engine) -> UnitOfWork:
    Base.metadata.create_all(sqlite_engine)
    return UnitOfWork(make_sessions(sqlite_engine), Outbox, "/tests")


def write(name: str, refuse: bool = False):  # type: ignore[no-untyped-def]
    def run(unit: Unit) -> str:
        unit.session.add(Written(name=name))
        unit.session.flush()
        if refuse:
            raise Refused(name)
        return name

    return run


def names(uow: UnitOfWork) -> list[str]:
    with uow.read() as unit:
        return sorted(unit.session.scalars(select(Written.name)))


def behind_a_held_group(
    writes: GroupCommit, *calls: Callable[[], Awaitable[object]]
) -> list[object]:
    """Start `writes`, hold its first group open while `calls` arrive (so that they form
    the next group together), then stop it: the first group's result, then each call's
    result or exception."""
    gate = threading.Event()

    def blocker(unit: Unit) -> str:
        assert gate.wait(10)
        return "first"

    async def scenario() -> list[object]:
        first = asyncio.ensure_future(writes.submit(blocker))
        await asyncio.sleep(0.05)  # the writer holds the first group open
        rest = [asyncio.ensure_future(call()) for call in calls]
        await asyncio.sleep(0.05)
        gate.set()
        return await asyncio.gather(first, *rest, return_exceptions=True)

    writes.start()
    try:
        return asyncio.run(scenario())
    finally:
        writes.stop()


def test_writes_that_arrive_together_share_one_commit_and_a_refused_one_undoes_no_other(
    uow: UnitOfWork,
) -> None:
    writes = GroupCommit(uow)
    results = behind_a_held_group(
        writes,
        *(partial(writes.submit, write(f"w{n}", refuse=n == 2)) for n in range(5)),
    )

    assert results[0] == "first"
    assert results[1:3] + results[4:] == ["w0", "w1", "w3", "w4"]
    assert isinstance(results[3], Refused)
    assert names(uow) == ["w0", "w1", "w3", "w4"]
    # the second group failed as one, then its writes went one at a time
    assert writes.groups == 1 + 4 and writes.writes == 5


def test_a_write_sees_the_context_of_its_own_request(uow: UnitOfWork) -> None:
    writes = GroupCommit(uow)
    writes.start()

    async def one(name: str) -> str:
        request.set(name)
        return await writes.submit(lambda unit: request.get())

    async def scenario() -> list[str]:
        return list(await asyncio.gather(*(one(f"r{n}") for n in range(10))))

    try:
        seen = asyncio.run(scenario())
    finally:
        writes.stop()

    assert seen == [f"r{n}" for n in range(10)]
    with uow.read() as unit:
        assert unit.session.scalar(select(func.count()).select_from(Written)) == 0


request: contextvars.ContextVar[str] = contextvars.ContextVar("request", default="none")


def seen_in_context(name: str) -> str:
    return f"{name}@{request.get()}"


class Taken(DomainError):
    pass


class Batches:
    """A set-based write of names: refuses (answers) those starting with "x", raises when
    a name is "boom"; notes the names of each call."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, unit: Unit, items: Sequence[Item[str]]) -> list[str | DomainError]:
        self.calls.append([item.value for item in items])
        if any(item.value == "boom" for item in items):
            unit.session.add(Written(name="half-done"))
            unit.session.flush()
            raise Refused("boom")
        answers: list[str | DomainError] = []
        for item in items:
            if item.value.startswith("x"):
                answers.append(Taken(item.value))
                continue
            unit.session.add(Written(name=item.value))
            answers.append(item.within(seen_in_context, item.value))
        unit.session.flush()
        return answers


def test_values_that_arrive_together_reach_their_batch_in_one_call(uow: UnitOfWork) -> None:
    """One call for the group; a refused value fails its own caller only; each value is
    answered in the context of its own request."""
    writes = GroupCommit(uow)
    batch = Batches()

    async def one(name: str) -> str:
        request.set(f"r-{name}")
        return await writes.submit_each(batch, name)

    results = behind_a_held_group(writes, *(partial(one, name) for name in ("a", "xb", "c")))

    assert results[0] == "first"
    assert results[1] == "a@r-a" and results[3] == "c@r-c"
    assert isinstance(results[2], Taken)
    assert batch.calls == [["a", "xb", "c"]]
    assert names(uow) == ["a", "c"]
    assert writes.groups == 2 and writes.writes == 4


def test_a_batch_that_raises_runs_again_one_value_at_a_time(uow: UnitOfWork) -> None:
    writes = GroupCommit(uow)
    batch = Batches()
    results = behind_a_held_group(
        writes, *(partial(writes.submit_each, batch, name) for name in ("a", "boom", "c"))
    )

    assert results[1] == "a@none" and results[3] == "c@none"
    assert isinstance(results[2], Refused)
    assert batch.calls == [["a", "boom", "c"], ["a"], ["boom"], ["c"]]
    assert names(uow) == ["a", "c"]  # nothing of the failed group's first try stays
