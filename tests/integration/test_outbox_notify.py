"""On PostgreSQL a commit in another process wakes the relay (LISTEN/NOTIFY), where it
used to wait for its next poll. Every relay here polls once a minute, so only a
notification can make it publish within the tests' deadlines. A second engine on the same
database stands in for another worker: it shares no pool and no session events with the
relay."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import pytest
from sqlalchemy import Engine, text

from shared.messaging.envelope import Envelope, KafkaHeaders
from shared.messaging.events import Event
from shared.messaging.outbox import OutboxRelay
from shared.messaging.producer import Placed
from shared.messaging.unit_of_work import UnitOfWork
from shared.storage.db import make_engine, make_sessions
from shared.storage.notify import sender
from tests.conftest import fresh_postgres
from tests.helpers import eventually
from tests.schema import Base, Outbox

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


class Tick(Event, type="tick", topic="orders", key="key"):
    key: str
    seq: int


class Recording:
    """A producer that acknowledges everything on partition 0 and keeps what it sent."""

    def __init__(self) -> None:
        self.sent: list[Envelope] = []
        self._lock = threading.Lock()

    def send_records(
        self, records: Sequence[tuple[str, str, bytes | None, KafkaHeaders]], timeout: float = 60
    ) -> list[Placed]:
        placed = []
        with self._lock:
            for _topic, key, value, headers in records:
                self.sent.append(Envelope.from_headers(headers, key, value or b""))
                slot = Placed()
                slot.done, slot.partition, slot.offset = True, 0, len(self.sent) - 1
                placed.append(slot)
        return placed


@pytest.fixture
def engines() -> Iterator[tuple[Engine, Engine]]:
    """Two engines on one new PostgreSQL database: the relay's, and another worker's."""
    with fresh_postgres(1) as (url,):
        ours, theirs = make_engine(url), make_engine(url)
        Base.metadata.create_all(ours)
        yield ours, theirs
        ours.dispose()
        theirs.dispose()


def start_relay(engine: Engine, producer: Recording) -> OutboxRelay:
    relay = OutboxRelay(make_sessions(engine), Outbox, producer, poll_interval=60)  # type: ignore[arg-type]
    relay.start()
    assert relay._listener is not None
    eventually(relay._listener.listening.is_set, timeout=10, message="LISTEN in force")
    return relay


def emit(engine: Engine, *seqs: int) -> list[str]:
    uow = UnitOfWork(make_sessions(engine), Outbox, "/tests")
    with uow() as unit:
        return [unit.outbox.emit(Tick(key=f"key-{seq}", seq=seq)).id for seq in seqs]


def test_a_commit_in_another_process_wakes_the_relay_at_once(
    engines: tuple[Engine, Engine],
) -> None:
    ours, theirs = engines
    producer = Recording()
    relay = start_relay(ours, producer)
    written: list[str] = []
    try:
        for round_ in range(3):
            written.extend(emit(theirs, 2 * round_, 2 * round_ + 1))
            eventually(
                lambda: len(producer.sent) >= len(written),
                timeout=10,
                message="the other worker's rows published without a poll",
            )
    finally:
        relay.stop()
    assert [e.id for e in producer.sent] == written


def test_two_relays_publish_each_row_once_in_commit_order(
    engines: tuple[Engine, Engine],
) -> None:
    """Both workers write and both relays listen; the advisory lock lets one publish at a
    time, and the notification brings the holder back for the other's rows."""
    ours, theirs = engines
    producer = Recording()
    relays = [start_relay(ours, producer), start_relay(theirs, producer)]
    written: list[str] = []
    try:
        for seq in range(40):
            written += emit(ours if seq % 2 else theirs, seq)
        eventually(
            lambda: len(producer.sent) >= len(written), timeout=20, message="every row published"
        )
    finally:
        for relay in relays:
            relay.stop()
    assert [e.id for e in producer.sent] == written


def listening_backends(engine: Engine) -> list[int]:
    with engine.connect() as connection:
        return list(
            connection.scalars(
                text(
                    "SELECT pid FROM pg_stat_activity "
                    "WHERE datname = current_database() AND query LIKE 'LISTEN%'"
                )
            )
        )


def test_the_listener_listens_again_after_its_connection_is_killed(
    engines: tuple[Engine, Engine],
) -> None:
    ours, theirs = engines
    producer = Recording()
    relay = OutboxRelay(make_sessions(ours), Outbox, producer, poll_interval=60)  # type: ignore[arg-type]
    assert relay._listener is not None
    relay._listener._retry = 0.1
    relay.start()
    listener = relay._listener
    try:
        eventually(listener.listening.is_set, timeout=10, message="LISTEN in force")
        (killed,) = listening_backends(theirs)
        with theirs.connect() as connection:
            assert connection.scalar(text("SELECT pg_terminate_backend(:p)"), {"p": killed})
        eventually(
            lambda: listening_backends(theirs) not in ([], [killed]),
            timeout=10,
            message="LISTEN again on a new connection",
        )
        assert listener.alive
        ids = emit(theirs, 7)
        eventually(
            lambda: set(ids) <= {e.id for e in producer.sent},
            timeout=10,
            message="a row after the reconnect published without a poll",
        )
    finally:
        relay.stop()


def test_a_relay_hears_only_the_other_engines_commits(engines: tuple[Engine, Engine]) -> None:
    """Its own engine's commits wake it directly; the server's copy of their notification
    is left unheard. Notifications arrive in commit order, so when the other engine's
    arrives, its own would have arrived first."""
    ours, theirs = engines
    relay = start_relay(ours, Recording())
    heard: list[int] = []
    try:
        assert relay._listener is not None
        relay._listener._heard = lambda: heard.append(1)
        emit(ours, 1)
        emit(theirs, 2)
        eventually(lambda: heard, timeout=10, message="the other engine's commit heard")
    finally:
        relay.stop()
    assert heard == [1]


def test_anyones_notifications_only_wake_the_relay(engines: tuple[Engine, Engine]) -> None:
    """A notification is no instruction: whatever its payload, whoever sends it, the relay
    only looks for unsent rows, finds none, and goes on publishing what is committed."""
    ours, theirs = engines
    producer = Recording()
    relay = start_relay(ours, producer)
    hostile = ["", "x" * 7999, "' OR 1=1; --", "\u202e\ufeff", sender(ours)]  # the last forged
    try:
        notifying = text("SELECT pg_notify('outbox_waiting', :p)")
        with theirs.connect() as connection:
            for _ in range(50):
                for payload in hostile:
                    connection.execute(notifying, {"p": payload})
            connection.commit()
        ids = emit(theirs, 1)
        eventually(lambda: len(producer.sent) >= 1, timeout=10, message="the row published")
    finally:
        relay.stop()
    assert [e.id for e in producer.sent] == ids
    assert relay.last_error is None
