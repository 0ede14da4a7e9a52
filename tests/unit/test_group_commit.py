"""Group commit without a server: concurrent writes, one transaction per group."""

from __future__ import annotations

import asyncio
import threading

import pytest
from sqlalchemy import Engine, String, func, select
from sqlalchemy.orm import Mapped, mapped_column

from shared.messaging.unit_of_work import Unit, UnitOfWork
from shared.runtime.groupcommit import GroupCommit
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


def test_writes_that_arrive_together_share_one_commit_and_a_refused_one_undoes_no_other(
    uow: UnitOfWork,
) -> None:
    writes = GroupCommit(uow)
    writes.start()
    gate = threading.Event()

    def blocker(unit: Unit) -> str:
        assert gate.wait(10)
        return "first"

    async def scenario() -> list[object]:
        first = asyncio.ensure_future(writes.submit(blocker))
        await asyncio.sleep(0.05)  # the writer holds the first group open
        rest = [
            asyncio.ensure_future(writes.submit(write(f"w{n}", refuse=n == 2))) for n in range(5)
        ]
        await asyncio.sleep(0.05)
        gate.set()
        return await asyncio.gather(first, *rest, return_exceptions=True)

    try:
        results = asyncio.run(scenario())
    finally:
        writes.stop()

    assert results[0] == "first"
    assert results[1:3] + results[4:] == ["w0", "w1", "w3", "w4"]
    assert isinstance(results[3], Refused)
    assert names(uow) == ["w0", "w1", "w3", "w4"]
    # the second group failed as one, then its writes went one at a time
    assert writes.groups == 1 + 4 and writes.writes == 5


def test_a_write_sees_the_context_of_its_own_request(uow: UnitOfWork) -> None:
    import contextvars

    request: contextvars.ContextVar[str] = contextvars.ContextVar("request", default="none")
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
