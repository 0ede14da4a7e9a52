"""Insert-first idempotency: claim (consumer, event id) in the handler's transaction.

The insert is `ON CONFLICT DO NOTHING`, so the unique key decides atomically whether this
delivery is the first: no check-then-insert race between two processes."""

from __future__ import annotations

import enum

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db import ProcessedEventMixin, insert
from shared.envelope import Envelope, utcnow


class Claim(enum.Enum):
    NEW = "new"
    """First delivery: apply it."""
    DUPLICATE = "duplicate"
    """Already applied: a redelivery or a replay."""
    CONFLICT = "conflict"
    """The id was applied before with another payload: never apply, dead-letter it."""


def claim(
    session: Session, model: type[ProcessedEventMixin], consumer: str, event: Envelope
) -> Claim:
    statement = (
        insert(session, model.__table__)  # type: ignore[attr-defined]
        .values(
            consumer=consumer,
            event_id=event.id,
            fingerprint=event.fingerprint,
            event_type=event.type,
            processed_at=utcnow(),
        )
        .on_conflict_do_nothing()
        .returning(model.event_id)
    )
    if session.execute(statement).first() is not None:
        return Claim.NEW
    first = session.scalar(
        select(model.fingerprint).where(model.consumer == consumer, model.event_id == event.id)
    )
    return Claim.DUPLICATE if first == event.fingerprint else Claim.CONFLICT
