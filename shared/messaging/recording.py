"""What the outbox relay does once the broker has answered a batch: mark the rows on
Kafka sent and record them (the service's `on_published` hook), and park the rows that
cannot go, in one transaction: one executemany and the hook's own set-based work.

If that transaction fails on a value, it runs again with the hook on each row in a
savepoint, so that only the rows the hook cannot record are parked; they stay sent, since
they are on Kafka. If the database is away, the outcome is held, and marked before
anything else is sent: nothing the broker acknowledged is sent twice."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, update
from sqlalchemy.orm import Session, sessionmaker

from shared.clock import utcnow
from shared.messaging import parking
from shared.messaging.envelope import Envelope
from shared.messaging.failures import transient
from shared.messaging.observe import IGNORED_RELAY, RelayObserver
from shared.messaging.parking import Parking
from shared.messaging.producer import Delivery
from shared.storage.db import OutboxMixin, writing

log = logging.getLogger(__name__)

Hook = Callable[[Session, list[Delivery]], None]


def row_to_envelope(row: Any) -> Envelope:
    return Envelope.from_headers(
        [(name, value) for name, value in row.headers], row.key, row.payload
    )


@dataclass(slots=True)
class Outcome:
    """What became of one batch: rows on Kafka, to mark sent and record (`done`: row,
    partition, offset, and whether it was published now rather than before), rows to
    park, and the errors of rows left to try again."""

    done: list[tuple[Any, int, int, bool]] = field(default_factory=list)
    parked: list[Parking] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


class Recorder:
    """Settles the relay's batches in its outbox table (`settle`), and counts them."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        model: type[OutboxMixin],
        on_published: Hook | None = None,
        observer: RelayObserver = IGNORED_RELAY,
        announce: Callable[[Sequence[Parking]], None] | None = None,
    ) -> None:
        self._sessions = sessions
        self._engine = sessions.kw["bind"]
        self._on_published = on_published
        self._observer = observer
        self._announce = announce
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
        self._mark_parked = (
            update(table)
            .where(table.c.id == bindparam("row_id"))
            .values(parked_at=bindparam("b_parked_at"), parked_reason=bindparam("b_reason"))
        )
        self.held: Outcome | None = None
        """Acknowledged rows not marked yet (the database was away)."""
        self.published = 0
        self.parked = 0

    def settle_held(self) -> None:
        """Mark what a database outage left acknowledged but unmarked (raises while the
        database is still away)."""
        if self.held is not None:
            held, self.held = self.held, None
            self.settle(held)

    def settle(self, outcome: Outcome) -> None:
        """Mark, record and park in one transaction; again row by row if a value fails
        it; hold the outcome if the database is away."""
        if not outcome.done and not outcome.parked:
            return
        now = utcnow()
        try:
            try:
                unrecorded = self._mark(outcome, now, one_by_one=False)
            except Exception as exc:
                if transient(exc):
                    raise
                log.warning(
                    "outbox relay: recording %d event(s) failed, again one by one: %s",
                    len(outcome.done),
                    parking.describe(exc),
                )
                unrecorded = self._mark(outcome, now, one_by_one=True)
        except Exception:
            self.held = outcome
            raise
        published = [row for row, _, _, now_sent in outcome.done if now_sent]
        self.published += len(published)
        self._report(published, now)
        parked = [*outcome.parked, *unrecorded]
        if parked:
            self._park(parked)

    def _mark(self, outcome: Outcome, now: datetime, one_by_one: bool) -> list[Parking]:
        """One transaction: mark rows sent, run the hook (on each row in a savepoint when
        `one_by_one`), park; return the rows parked as unrecorded."""
        unrecorded: list[Parking] = []
        with writing(self._engine), self._sessions.begin() as session:
            connection = session.connection()
            if outcome.done:
                connection.execute(
                    self._mark_sent,
                    [
                        {"row_id": row.id, "b_sent_at": now, "b_partition": p, "b_offset": o}
                        for row, p, o, _ in outcome.done
                    ],
                )
            if self._on_published is not None and outcome.done:
                if not one_by_one:
                    self._on_published(
                        session,
                        [
                            Delivery(row_to_envelope(row), row.topic, p, o)
                            for row, p, o, _ in outcome.done
                        ],
                    )
                else:
                    unrecorded = self._record_one_by_one(session, self._on_published, outcome)
            parked = [*outcome.parked, *unrecorded]
            if parked:
                connection.execute(
                    self._mark_parked,
                    [{"row_id": x.row_id, "b_parked_at": now, "b_reason": x.error} for x in parked],
                )
        return unrecorded

    @staticmethod
    def _record_one_by_one(session: Session, hook: Hook, outcome: Outcome) -> list[Parking]:
        unrecorded = []
        for row, p, o, _ in outcome.done:
            try:
                with session.begin_nested():
                    hook(session, [Delivery(row_to_envelope(row), row.topic, p, o)])
            except Exception as exc:
                if transient(exc):
                    raise
                unrecorded.append(parking.unrecorded(row, p, o, exc))
        return unrecorded

    def _park(self, parked: Sequence[Parking]) -> None:
        """After the commit: count, log and announce the rows parked."""
        self.parked += len(parked)
        for row in parked:
            log.warning(
                "outbox relay: parked event %s (%s) for %s: %s",
                row.event_id,
                row.event_type,
                row.topic,
                row.error,
            )
            self._observer.parked(row.topic, row.reason)
        if self._announce is not None:
            self._announce(parked)

    def _report(self, rows: Sequence[Any], acked_at: datetime) -> None:
        """Tell the observer what the broker acknowledged: counts by topic and type, and
        each event's time from its creation (the outbox row) to the acknowledgement."""
        if self._observer is IGNORED_RELAY or not rows:
            return
        counts: dict[tuple[str, str], int] = {}
        latencies = []
        for row in rows:
            counted = (row.topic, row.event_type)
            counts[counted] = counts.get(counted, 0) + 1
            latencies.append((acked_at - row.created_at).total_seconds())
        self._observer.published(counts, latencies)
