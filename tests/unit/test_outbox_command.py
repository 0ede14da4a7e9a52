"""`python -m tools.ops.outbox`: an operator lists the rows a service's relay parked, with
why, and hands them back once the cause is fixed, on the service's own database. A row
that was published before it was parked is recorded on retry, never published again."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from confluent_kafka import KafkaError
from sqlalchemy import select, text

from services.order.chain import file_published
from services.order.main import SPEC
from services.order.models import OrderEvent, OutboxMessage
from shared.messaging.envelope import Envelope, dump_json
from shared.messaging.outbox import OutboxRelay, add_rows, outbox_row
from shared.messaging.unit_of_work import UnitOfWork
from shared.runtime.service import ServiceSpec
from tests.helpers import sqlite_varchar_check
from tests.unit.test_outbox_relay import FakeProducer
from tools.ops import outbox

pytestmark = pytest.mark.unit


def order_created(n: int, causation_id: str = "request-1") -> Envelope:
    return Envelope(
        type="order-created",
        source="/services/order",
        key=f"order-{n}",
        data=dump_json({"order_id": f"order-{n}", "user_id": "u", "items": []}),
        causation_id=causation_id,
    )


class Outbox:
    """The order service's outbox with a relay (a fake broker), one row it cannot
    publish, one it cannot record (a causation id too long for `order_events`), one fine."""

    def __init__(self, uow: UnitOfWork) -> None:
        self.uow = uow
        self.engine = uow.sessions.kw["bind"]
        self.url = self.engine.url.render_as_string(hide_password=False)
        with self.engine.begin() as connection:
            connection.execute(text(sqlite_varchar_check("order_events", "causation_id", 64)))
        self.producer = FakeProducer()
        self.relay = OutboxRelay(
            uow.sessions,
            OutboxMessage,
            self.producer,  # type: ignore[arg-type]
            on_published=file_published,
        )
        self.fine, self.too_large = order_created(1), order_created(2)
        self.unrecorded = order_created(3, causation_id="r" * 200)
        with uow() as unit:
            events = (self.fine, self.too_large, self.unrecorded)
            add_rows(unit.session, OutboxMessage, [outbox_row("orders", e) for e in events])
        self.producer.refused = {self.too_large.id: KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)}
        self.relay.relay_once()

    def row(self, event: Envelope) -> OutboxMessage:
        with self.uow.sessions() as session:
            found = session.scalar(select(OutboxMessage).where(OutboxMessage.event_id == event.id))
            assert found is not None
            return found

    def filed(self) -> set[str]:
        with self.uow.sessions() as session:
            return set(session.scalars(select(OrderEvent.event_id)))

    def run(self, *args: str) -> int:
        return outbox.main(["order", *args, "--database-url", self.url])


@pytest.fixture
def parked(service_uow: Callable[[ServiceSpec], UnitOfWork]) -> Outbox:
    return Outbox(service_uow(SPEC))


def test_list_shows_each_parked_row_with_what_went_wrong(
    parked: Outbox, capsys: pytest.CaptureFixture[str]
) -> None:
    assert parked.run("list") == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["EVENT", "ID", "TYPE", "PARKED"]
    assert lines[0].rstrip().endswith("REASON")
    (too_large,) = [line for line in lines if parked.too_large.id in line]
    (unrecorded,) = [line for line in lines if parked.unrecorded.id in line]
    assert "order-created" in too_large and " unpublishable " in too_large
    assert "MSG_SIZE_TOO_LARGE" in too_large
    assert " unrecorded " in unrecorded and "not recorded" in unrecorded
    assert "character varying(64)" in unrecorded
    assert not any(parked.fine.id in line for line in lines)
    assert "2 parked row(s)" in lines[-1]


def test_list_reads_the_database_the_service_is_configured_with(
    parked: Outbox, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORDER_DATABASE_URL", parked.url)

    assert outbox.main(["order", "list"]) == 0

    assert parked.too_large.id in capsys.readouterr().out


def test_retrying_an_unrecorded_row_after_the_fix_records_it_without_publishing_again(
    parked: Outbox, capsys: pytest.CaptureFixture[str]
) -> None:
    before = parked.row(parked.unrecorded)
    sends = len(parked.producer.sent)
    with parked.engine.begin() as connection:  # the fix
        connection.execute(text("DROP TRIGGER order_events_causation_id_fits"))

    assert parked.run("retry", parked.unrecorded.id) == 0

    assert f"retrying {parked.unrecorded.id}" in capsys.readouterr().out
    handed_back = parked.row(parked.unrecorded)
    assert (handed_back.parked_at, handed_back.parked_reason, handed_back.sent_at) == (
        None,
        None,
        None,
    )
    assert (handed_back.partition, handed_back.offset) == (before.partition, before.offset)
    assert parked.row(parked.too_large).parked_at is not None, "only the row named"

    assert parked.relay.relay_once() == 1

    assert len(parked.producer.sent) == sends, "nothing published again"
    assert parked.unrecorded.id in parked.filed()
    recorded = parked.row(parked.unrecorded)
    assert recorded.sent_at is not None and recorded.parked_at is None
    assert (recorded.partition, recorded.offset) == (before.partition, before.offset)


def test_retry_all_hands_every_parked_row_back_and_a_still_bad_one_is_parked_again(
    parked: Outbox, capsys: pytest.CaptureFixture[str]
) -> None:
    assert parked.run("retry", "--all") == 0
    assert "2 row(s) handed back" in capsys.readouterr().out

    parked.relay.relay_once()

    assert parked.row(parked.too_large).parked_at is not None, "still too large"
    assert parked.row(parked.unrecorded).parked_at is not None, "still not recordable"
    assert parked.relay.parked == 4, "each parked twice"
    assert [e.id for _, e in parked.producer.sent].count(parked.unrecorded.id) == 1


def test_retry_says_which_ids_are_not_parked_and_fails(
    parked: Outbox, capsys: pytest.CaptureFixture[str]
) -> None:
    assert parked.run("retry", parked.too_large.id, parked.fine.id, "no-such-id") == 1

    out, err = capsys.readouterr()
    assert f"retrying {parked.too_large.id}" in out
    assert f"{parked.fine.id} is not a parked row of order" in err
    assert "no-such-id is not a parked row" in err
    assert parked.row(parked.too_large).parked_at is None


@pytest.mark.parametrize("args", [("retry",), ("list", "some-id"), ("list", "--all")], ids=" ".join)
def test_a_command_given_the_wrong_arguments_changes_nothing(
    parked: Outbox, args: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    assert parked.run(*args) == 2

    assert capsys.readouterr().err
    assert parked.row(parked.too_large).parked_at is not None


def test_an_outbox_with_nothing_parked_says_so(
    service_uow: Callable[[ServiceSpec], UnitOfWork], capsys: pytest.CaptureFixture[str]
) -> None:
    url = service_uow(SPEC).sessions.kw["bind"].url.render_as_string(hide_password=False)

    assert outbox.main(["order", "list", "--database-url", url]) == 0

    assert capsys.readouterr().out.strip() == "no parked row in the outbox of order"
