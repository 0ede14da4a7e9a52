"""`python -m tools.replay`: what it takes from the command line, and the views each
service declares (their SQL against a real SQLite database, their topics); no broker."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.registry import get, load, names
from shared.messaging.events import Event
from shared.messaging.replay import ReplayOutbox, checksum, router_of
from shared.messaging.unit_of_work import Unit
from shared.storage.db import make_engine
from shared.storage.migrations import upgrade
from shared.storage.tables import shared_tables
from tests.helpers import deliver
from tools.ops import replay as command

pytestmark = pytest.mark.unit


def test_a_time_is_taken_with_its_offset_and_given_back_in_utc() -> None:
    moment = command.parse_time("2026-01-02T03:04:05+02:00")
    assert moment == datetime(2026, 1, 2, 1, 4, 5, tzinfo=UTC)
    assert command.parse_time("2026-01-02T03:04:05Z").tzinfo is UTC


@pytest.mark.parametrize(
    "text",
    [
        "2026-01-02T03:04:05",  # no offset: whose midnight?
        "yesterday",
        "2026-01-02T03:04:05Z\x00",
        "2026-01-02T03:04:05Z" + " " * 100,
        "9" * 10_000,
        "",
        "2999-01-01T00:00:00Z",  # the future
    ],
    ids=["naive", "words", "nul", "padded", "flood", "empty", "future"],
)
def test_a_bad_time_is_refused_with_a_reason(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as refused:
        command.parse_time(text)
    assert len(str(refused.value)) < 200, "the refusal does not echo a flood"


@pytest.mark.parametrize(
    "argv", [["nope"], ["order\x00"], ["x" * 5000], ["product", "--view", "nope"]]
)
def test_an_unknown_service_or_view_ends_with_usage(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as ended:
        command.main(argv)
    assert ended.value.code == 2
    error = capsys.readouterr().err
    assert "no service" in error or "no view" in error
    assert len(error) < 2000


def test_list_names_every_view_with_its_tables_and_topics(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert command.main(["order", "--list"]) == 0
    listed = capsys.readouterr().out
    for view in command.views_of("order"):
        assert f"{view.name}: {', '.join(view.tables)} from {', '.join(view.topics)}" in listed


@pytest.mark.parametrize("service", names())
def test_each_view_reads_only_topics_the_service_consumes_or_owns(service: str) -> None:
    spec = load(f"{get(service).package}.main:SPEC")
    for view in command.views_of(service):
        assert set(view.topics) <= {*spec.subscribes, *spec.owns}, view.name
        assert view.tables and view.about


@pytest.mark.parametrize("service", names())
def test_each_view_empties_and_reads_on_a_real_database(service: str, tmp_path: Path) -> None:
    spec = load(f"{get(service).package}.main:SPEC")
    engine = make_engine(f"sqlite:///{tmp_path}/{service}.db")
    try:
        upgrade(engine, spec.migrations)
        views = command.views_of(service)
        router_of(views)  # one handler per event type across the service's views
        with Session(engine) as session, session.begin():
            for view in views:
                view.reset(session)
                assert view.rows(session) == []
                assert view.checksum(session) == checksum([])
    finally:
        engine.dispose()


def test_a_checksum_tells_rows_apart_and_their_order_matters_not_their_types() -> None:
    rows = [("a", 1, True), ("b", 2, False)]
    assert checksum(rows) == checksum(list(rows))
    assert checksum(rows) != checksum(rows[::-1])
    assert checksum(rows) != checksum([("a", 1, True), ("b", 3, False)])
    assert checksum(rows).startswith("2:")


def test_what_a_handler_emits_in_a_replay_is_dropped_not_written(tmp_path: Path) -> None:
    from tests.integration.loyalty import service as loyalty

    engine = make_engine(f"sqlite:///{tmp_path}/loyalty.db")
    try:
        upgrade(engine, loyalty.SPEC.migrations)
        outbox = ReplayOutbox()
        router = router_of(
            [
                command.View(
                    name="points",
                    tables=("points",),
                    handlers=(loyalty.earn_points,),
                    reset=lambda session: None,
                    rows=lambda session: [],
                )
            ]
        )
        orders: Sequence[Event] = [
            loyalty.OrderCreated(order_id=f"o{n}", user_id="u", items=[1, 2]) for n in range(3)
        ]
        with Session(engine) as session, session.begin():
            unit = Unit(session, outbox)
            deliver(router, unit, *orders)
            outbox.flush()
        model = shared_tables(loyalty.Base).outbox
        with Session(engine) as session:
            assert session.scalar(select(func.count()).select_from(model)) == 0
            assert session.scalar(select(func.count()).select_from(loyalty.Points)) == 3
        assert outbox.dropped == 3
    finally:
        engine.dispose()
