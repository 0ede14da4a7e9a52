"""Transactional outbox: events are rows committed with the change; a relay publishes them.

The unit of work calls `add_rows` inside the business transaction. `OutboxRelay` runs in
a thread, is woken by every commit that added events, publishes unsent rows in id order
with the idempotent producer, and marks them sent only after the broker acknowledged
them. A crash between publish and mark republishes the same event ids, which consumers
drop. A stop publishes what is left before it returns.

One bad row never holds up the others (shared.messaging.parking): a record the broker
refuses for good is parked (after a try on its own, if it was refused within a batch),
and a row whose values the `on_published` hook cannot store is parked as unrecorded
(shared.messaging.recording). Nothing the broker acknowledged is sent twice.

A commit in this process on the relay's database wakes the relay directly. On PostgreSQL
several processes may share the database: each commit that adds rows also notifies the
table's channel, and every relay LISTENs (shared.storage.notify) for the other
processes' notifications, so the one that holds the advisory lock hears of rows another
process wrote as they commit. Polling is left as a fallback, every `poll_interval`
seconds."""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy import Connection, delete, event, func, insert, select, text
from sqlalchemy.orm import Session, sessionmaker

from shared.clock import utcnow
from shared.messaging import exporters, parking, spans
from shared.messaging.envelope import Envelope
from shared.messaging.observe import IGNORED_RELAY, RelayObserver
from shared.messaging.producer import EventProducer, Placed
from shared.messaging.recording import Hook, Outcome, Recorder, row_to_envelope
from shared.storage.db import OutboxMixin, is_postgres, reader, writing
from shared.storage.notify import Listener, listens, notify

__all__ = ["OutboxRelay", "add_rows", "outbox_row", "row_to_envelope"]

log = logging.getLogger(__name__)

_DIRTY = "outbox_dirty"


def outbox_row(topic: str, envelope: Envelope) -> dict[str, Any]:
    """The outbox row of one event, as `add_rows` inserts it."""
    return {
        "event_id": envelope.id,
        "topic": topic,
        "key": envelope.key,
        "event_type": envelope.type,
        "headers": [[name, value] for name, value in envelope.text_headers()],
        "payload": envelope.data,
        "created_at": envelope.time,
    }


def add_rows(session: Session, model: type[OutboxMixin], rows: list[dict[str, Any]]) -> None:
    """Insert outbox rows in the session's open transaction, in one statement."""
    session.execute(insert(model.__table__), rows)  # type: ignore[attr-defined]
    session.info[_DIRTY] = True
    notify(session, model.waiting_channel())


class OutboxRelay:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        model: type[OutboxMixin],
        producer: EventProducer,
        *,
        batch_size: int = 2000,
        poll_interval: float | None = None,
        on_published: Hook | None = None,
        observer: RelayObserver = IGNORED_RELAY,
        dead_letter_topic: str | None = None,
        name: str = "outbox",
    ) -> None:
        """`on_published` runs in the transaction that marks events sent, with where the
        broker put them (the order service files its own events in the chain there);
        `observer` hears of every acknowledged batch and parked row. A parked row is
        announced on `dead_letter_topic`, if given, as `name` (`dlq_consumer`). Without
        being woken it looks every `poll_interval` seconds: by default 0.5 on SQLite, 5 on
        PostgreSQL, where notifications wake it."""
        self._sessions = sessions
        self._model = model
        self._producer = producer
        self._batch_size = batch_size
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        engine = sessions.kw["bind"]
        self._lock_key = zlib.crc32(model.__tablename__.encode()) if is_postgres(engine) else None  # type: ignore[attr-defined]
        self._engine = engine
        self._engine_reads = reader(engine)
        self._recorder = Recorder(
            sessions,
            model,
            on_published,
            observer,
            None
            if dead_letter_topic is None
            else partial(parking.announce, producer, dead_letter_topic, source=name),
        )
        self.last_error: str | None = None
        self._listener: Listener | None = None
        if listens(engine):
            self._listener = Listener(engine, model.waiting_channel(), self._wake.set)
        event.listen(Session, "after_commit", self._after_commit)
        if poll_interval is None:
            poll_interval = 0.5 if self._listener is None else 5.0
        self._poll_interval = poll_interval

    @property
    def published(self) -> int:
        """Events published since start."""
        return self._recorder.published

    @property
    def parked(self) -> int:
        """Rows parked since start."""
        return self._recorder.parked

    def _after_commit(self, session: Session) -> None:
        """Any session of this process on the relay's database (its engine's pool) that
        added rows wakes it: the same scope as the engine's notifications, which its
        listener skips (shared.storage.notify)."""
        if session.info.get(_DIRTY) and _pool(session) is self._engine.pool:
            del session.info[_DIRTY]
            self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="outbox-relay", daemon=True)
        self._thread.start()
        if self._listener is not None:
            self._listener.start()

    def stop(self, timeout: float = 10) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout)
        if self._listener is not None:
            self._listener.stop()
        if event.contains(Session, "after_commit", self._after_commit):
            event.remove(Session, "after_commit", self._after_commit)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                sent = self.relay_once()
                self.last_error = None
            except Exception as exc:  # the broker or database is away: try again soon
                log.warning("outbox relay: %s", exc)
                self.last_error = str(exc)
                sent = 0
                self._stop.wait(1.0)
            if sent < self._batch_size:
                self._wake.wait(self._poll_interval)
        self._flush()

    def _flush(self, within: float = 5.0) -> None:
        """At stop, publish what is still unsent (the last requests' and events' rows), so
        that a stopped instance leaves nothing for the next one to send late."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                if self.relay_once() < self._batch_size:
                    return
            except Exception as exc:  # the broker is away: the rows wait for the next start
                log.warning("outbox relay: not flushed at stop: %s", exc)
                return

    def relay_once(self) -> int:
        """Publish one batch of unsent events; return how many rows it finished
        (published, recorded or parked). Raises when some rows must be tried again."""
        if self._lock_key is None:
            return self._relay_batch()
        # Across processes sharing one PostgreSQL database, one relay at a time keeps
        # the per-key order of publication equal to the commit order.
        with self._engine.connect() as lock_conn:
            if not lock_conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": self._lock_key}):
                return 0
            try:
                return self._relay_batch()
            finally:
                _unlock(lock_conn, self._lock_key)

    def _publish(self, rows: Sequence[Any]) -> list[Placed]:
        """Produce a batch of rows and wait for the broker's answer to each."""
        records = [
            (row.topic, row.key, row.payload, [tuple(h) for h in row.headers]) for row in rows
        ]
        if not exporters.exporting():
            return self._producer.send_records(records)
        publishing = spans.Publishing(records)
        placed = self._producer.send_records(publishing.records)
        publishing.end(placed)
        return placed

    def _relay_batch(self) -> int:
        self._recorder.settle_held()
        c = self._model.__table__.c  # type: ignore[attr-defined]
        with self._engine_reads.connect() as connection:
            rows = connection.execute(
                select(
                    *(c.id, c.event_id, c.topic, c.key, c.headers, c.payload, c.event_type),
                    *(c.created_at, c.partition, c.offset),
                )
                .where(c.sent_at.is_(None), c.parked_at.is_(None))
                .order_by(c.id)
                .limit(self._batch_size)
            ).all()
        if not rows:
            return 0
        outcome = self._send(rows)
        self._recorder.settle(outcome)
        if outcome.failed:
            failed = outcome.failed
            raise RuntimeError(f"{len(failed)} event(s) not acknowledged: {failed[0]}")
        return len(outcome.done) + len(outcome.parked)

    def _send(self, rows: Sequence[Any]) -> Outcome:
        """Publish the rows not on Kafka yet (a row un-parked after it was published keeps
        its offset, and is only recorded); sort out what the broker said."""
        outcome = Outcome()
        fresh = rows
        if any(row.offset is not None for row in rows):
            outcome.done = [(r, r.partition, r.offset, False) for r in rows if r.offset is not None]
            fresh = [row for row in rows if row.offset is None]
            if not fresh:
                return outcome
        placed = self._publish(fresh)
        done, refused = outcome.done, []
        for row, p in zip(fresh, placed, strict=True):
            if p.error is None:
                done.append((row, p.partition, p.offset, True))
            elif parking.permanent(p.error):
                refused.append((row, p))
            else:
                outcome.failed.append(str(p.error))
        for row, p in refused:
            # Refused within a batch, it may have shared another record's fate in the
            # broker's request: it is parked only if refused on its own too.
            self._sort_out(row, self._alone(row, outcome) if len(fresh) > 1 else p, outcome)
        return outcome

    def _alone(self, row: Any, outcome: Outcome) -> Placed | None:
        try:
            (placed,) = self._publish([row])
        except Exception as exc:  # the broker went away meanwhile: the row waits
            outcome.failed.append(str(exc))
            return None
        return placed

    @staticmethod
    def _sort_out(row: Any, placed: Placed | None, outcome: Outcome) -> None:
        if placed is None:
            return
        if placed.error is None:
            outcome.done.append((row, placed.partition, placed.offset, True))
        elif parking.permanent(placed.error):
            outcome.parked.append(parking.unpublishable(row, placed.error))
        else:
            outcome.failed.append(str(placed.error))

    def purge(self, older_than: timedelta) -> int:
        """Delete sent rows older than `older_than`; unsent rows are never purged."""
        model = self._model
        with writing(self._engine), self._sessions.begin() as session:
            result = session.execute(
                delete(model).where(
                    model.sent_at.is_not(None),
                    model.sent_at < utcnow() - older_than,
                    model.parked_at.is_(None),
                )
            )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def unsent(self) -> tuple[int, datetime | None, int]:
        """How many rows wait to be published, when the oldest of them was written, and
        how many are parked."""
        c = self._model.__table__.c  # type: ignore[attr-defined]
        unsent = (c.sent_at.is_(None), c.parked_at.is_(None))
        with self._engine_reads.connect() as connection:
            count = connection.scalar(select(func.count()).where(*unsent)) or 0
            oldest = connection.scalar(select(c.created_at).where(*unsent).order_by(c.id).limit(1))
            parked = connection.scalar(select(func.count()).where(c.parked_at.is_not(None))) or 0
        return int(count), oldest, int(parked)

    def pending(self) -> int:
        """How many rows wait to be published (parked ones do not)."""
        return self.unsent()[0]


def _pool(session: Session) -> Any:
    bind = session.get_bind()
    return getattr(bind, "pool", None)


def _unlock(connection: Connection, key: int) -> None:
    try:
        connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
    except Exception:  # the connection is gone, and with it the lock
        log.debug("advisory unlock failed", exc_info=True)
