"""One place commits: a unit of work is a DB transaction plus the outbox bound to it.

Handlers receive a `Unit`, change state through `unit.session`, append events through
`unit.outbox`, and never commit; the entrypoint's `with uow() as unit:` does."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from shared.messaging import tracing
from shared.messaging.envelope import Envelope
from shared.messaging.events import Event
from shared.messaging.outbox import add_rows, outbox_row
from shared.storage.db import OutboxMixin, writing


class Outbox:
    """Where a handler emits events; they are published only if the transaction commits.

    Emitted events are written in one bulk insert when the unit commits (`flush`)."""

    def __init__(
        self, session: Session, model: type[OutboxMixin], source: str, topic_prefix: str = ""
    ) -> None:
        self._session = session
        self._model = model
        self._source = source
        self._prefix = topic_prefix
        self._rows: list[dict[str, object]] = []

    def emit(
        self,
        payload: Event,
        *,
        correlation_id: str | None = None,
        caused_by: Envelope | None = None,
    ) -> Envelope:
        """Emit an event to its topic, keyed by its key, caused by what is being handled
        now (or by `caused_by`)."""
        event = tracing.new_event(
            payload.event_type,
            payload.event_key,
            payload,
            source=self._source,
            correlation_id=correlation_id,
            caused_by=caused_by,
        )
        self._rows.append(outbox_row(self._prefix + payload.topic, event))
        return event

    def flush(self) -> None:
        """Write what was emitted so far into the transaction."""
        if self._rows:
            add_rows(self._session, self._model, self._rows)
            self._rows = []


@dataclass(frozen=True, slots=True)
class Unit:
    session: Session
    outbox: Outbox


class UnitOfWork:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        outbox_model: type[OutboxMixin],
        source: str,
        topic_prefix: str = "",
        read_sessions: sessionmaker[Session] | None = None,
    ) -> None:
        self.sessions = sessions
        self.read_sessions = read_sessions or sessions
        self._model = outbox_model
        self._source = source
        self._prefix = topic_prefix

    @contextmanager
    def __call__(self) -> Iterator[Unit]:
        """Begin a transaction; commit when the block ends, roll back if it raises."""
        with writing(self.sessions.kw["bind"]), self.sessions.begin() as session:
            unit = Unit(session, Outbox(session, self._model, self._source, self._prefix))
            yield unit
            unit.outbox.flush()

    @contextmanager
    def read(self) -> Iterator[Unit]:
        """A transaction for queries only (it never commits, and on SQLite takes no write
        lock); emitting from it is a bug."""
        with self.read_sessions() as session:
            yield Unit(session, Outbox(session, self._model, self._source, self._prefix))
