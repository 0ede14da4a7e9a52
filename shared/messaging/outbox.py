"""Transactional outbox: events are rows committed with the change; a relay publishes them.

The unit of work calls `add_rows` inside the business transaction. `OutboxRelay` runs in
a thread, is woken by every commit that added events (and polls as a fallback, for other
processes writing the same database), publishes unsent rows in id order with the
idempotent producer, and marks them sent only after the broker acknowledged them. A crash
between publish and mark republishes the same event ids, which consumers drop. A stop
publishes what is left before it returns."""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, delete, event, func, insert, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from shared.messaging import tracing
from shared.messaging.envelope import Envelope, utcnow
from shared.messaging.observe import IGNORED_RELAY, RelayObserver
from shared.messaging.producer import Delivery, EventProducer, Placed
from shared.storage.db import OutboxMixin, is_postgres, make_sessions, reader, writing

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


def row_to_envelope(row: Any) -> Envelope:
    return Envelope.from_headers(
        [(name, value) for name, value in row.headers], row.key, row.payload
    )


class OutboxRelay:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        model: type[OutboxMixin],
        producer: EventProducer,
        *,
        batch_size: int = 2000,
        poll_interval: float = 0.5,
        on_published: Callable[[Session, list[Delivery]], None] | None = None,
        observer: RelayObserver = IGNORED_RELAY,
    ) -> None:
        """`on_published` runs in the transaction that marks events sent, with where the
        broker put them (the order service files its own events in the chain there);
        `observer` hears of every acknowledged batch."""
        self._observer = observer
        self._sessions = sessions
        self._reads = make_sessions(reader(sessions.kw["bind"]))
        self._on_published = on_published
        self._model = model
        self._producer = producer
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        engine = sessions.kw["bind"]
        self._lock_key = zlib.crc32(model.__tablename__.encode()) if is_postgres(engine) else None  # type: ignore[attr-defined]
        self._engine = engine
        self._engine_reads = reader(engine)
        table = model.__table__  # type: ignore[attr-defined]
        self._mark_sent = (
            update(table)
            .where(table.c.id == bindparam("row_id"))
            .values(
                sent_at=bindparam("b_sent_at"),
                partition=bindparam("b_partition"),
                offset=bindparam("b_offset"),
            )
        )
        self.published = 0
        self.last_error: str | None = None
        event.listen(sessions, "after_commit", self._after_commit)

    def _after_commit(self, session: Session) -> None:
        if session.info.pop(_DIRTY, False):
            self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="outbox-relay", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout)
        if event.contains(self._sessions, "after_commit", self._after_commit):
            event.remove(self._sessions, "after_commit", self._after_commit)

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
        """Publish one batch of unsent events; return how many were acknowledged."""
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
        if not tracing.exporting():
            return self._producer.send_records(records)
        publishing = tracing.Publishing(records)
        placed = self._producer.send_records(publishing.records)
        publishing.end(placed)
        return placed

    def _relay_batch(self) -> int:
        table = self._model.__table__  # type: ignore[attr-defined]
        c = table.c
        with self._engine_reads.connect() as connection:
            rows = connection.execute(
                select(c.id, c.topic, c.key, c.headers, c.payload, c.event_type, c.created_at)
                .where(c.sent_at.is_(None))
                .order_by(c.id)
                .limit(self._batch_size)
            ).all()
        if not rows:
            return 0
        placed = self._publish(rows)
        now = utcnow()
        acked = [
            {"row_id": row.id, "b_sent_at": now, "b_partition": p.partition, "b_offset": p.offset}
            for row, p in zip(rows, placed, strict=True)
            if p.error is None
        ]
        if acked:
            with writing(self._engine), self._sessions.begin() as session:
                session.connection().execute(self._mark_sent, acked)
                if self._on_published:
                    self._on_published(
                        session,
                        [
                            Delivery(row_to_envelope(row), row.topic, p.partition, p.offset)
                            for row, p in zip(rows, placed, strict=True)
                            if p.error is None
                        ],
                    )
            self.published += len(acked)
            self._report(rows, placed, now)
        failed = [p for p in placed if p.error is not None]
        if failed:
            raise RuntimeError(f"{len(failed)} event(s) not acknowledged: {failed[0].error}")
        return len(acked)

    def _report(self, rows: Sequence[Any], placed: Sequence[Placed], acked_at: datetime) -> None:
        """Tell the observer what the broker acknowledged: counts by topic and type, and
        each event's time from its creation (the outbox row) to the acknowledgement."""
        if self._observer is IGNORED_RELAY:
            return
        counts: dict[tuple[str, str], int] = {}
        latencies = []
        for row, p in zip(rows, placed, strict=True):
            if p.error is None:
                counted = (row.topic, row.event_type)
                counts[counted] = counts.get(counted, 0) + 1
                latencies.append((acked_at - row.created_at).total_seconds())
        self._observer.published(counts, latencies)

    def purge(self, older_than: timedelta) -> int:
        """Delete sent rows older than `older_than`; unsent rows are never purged."""
        model = self._model
        with writing(self._engine), self._sessions.begin() as session:
            result = session.execute(
                delete(model).where(
                    model.sent_at.is_not(None), model.sent_at < utcnow() - older_than
                )
            )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def unsent(self) -> tuple[int, datetime | None]:
        """How many rows wait to be published, and when the oldest of them was written."""
        c = self._model.__table__.c  # type: ignore[attr-defined]
        unsent = c.sent_at.is_(None)
        with self._engine_reads.connect() as connection:
            count = connection.scalar(select(func.count()).where(unsent)) or 0
            oldest = connection.scalar(select(c.created_at).where(unsent).order_by(c.id).limit(1))
        return int(count), oldest

    def pending(self) -> int:
        model = self._model
        with self._reads() as session:
            return int(
                session.scalar(
                    select(func.count()).select_from(model).where(model.sent_at.is_(None))
                )
                or 0
            )


def _unlock(connection: Connection, key: int) -> None:
    try:
        connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
    except Exception:  # the connection is gone, and with it the lock
        log.debug("advisory unlock failed", exc_info=True)
