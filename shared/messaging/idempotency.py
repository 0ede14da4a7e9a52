"""Insert-first idempotency: claim (consumer, event id) in the handler's transaction.

The insert is `ON CONFLICT DO NOTHING`, so the unique key decides atomically whether this
delivery is the first: no check-then-insert race between two processes."""

from __future__ import annotations

import enum
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.clock import utcnow
from shared.messaging.envelope import Envelope
from shared.storage.db import ProcessedEventMixin, insert


class Claim(enum.Enum):
    NEW = "new"
    """First delivery: apply it."""
    DUPLICATE = "duplicate"
    """Already applied: a redelivery or a replay."""
    CONFLICT = "conflict"
    """The id was applied before with another payload: never apply, dead-letter it."""


def claim_many(
    session: Session,
    model: type[ProcessedEventMixin],
    consumer: str,
    events: Sequence[Envelope],
) -> list[Claim]:
    """Claim a run of events, in two statements at most: one insert for all, and one
    look-up of the fingerprints of those already claimed. An id repeated within the run
    counts as claimed by its first occurrence."""
    if not events:
        return []
    table = model.__table__  # type: ignore[attr-defined]
    now = utcnow()
    prints = [event.fingerprint for event in events]
    rows = [
        {
            "consumer": consumer,
            "event_id": event.id,
            "fingerprint": fingerprint,
            "event_type": event.type,
            "processed_at": now,
        }
        for event, fingerprint in zip(events, prints, strict=True)
    ]
    statement = insert(session, table).on_conflict_do_nothing().returning(table.c.event_id)
    inserted = set(session.execute(statement, rows).scalars())
    earlier = {event.id for event in events} - inserted
    stored: dict[str, str] = {}
    if earlier:
        stored = dict(
            session.execute(
                select(table.c.event_id, table.c.fingerprint).where(
                    table.c.consumer == consumer, table.c.event_id.in_(earlier)
                )
            ).all()
        )
    outcomes = []
    for event, fingerprint in zip(events, prints, strict=True):
        if event.id in inserted:
            inserted.discard(event.id)  # a repeat later in the run compares with this one
            stored[event.id] = fingerprint
            outcomes.append(Claim.NEW)
        else:
            same = stored.get(event.id) == fingerprint
            outcomes.append(Claim.DUPLICATE if same else Claim.CONFLICT)
    return outcomes
