"""Rebuilding a service's derived views from the log, with no side effects.

A derived view is state a service keeps only from other services' events (order's known
users, product's availability, ...). `View` names its tables, how to empty it (`reset`),
the handlers that build it and the rows that define it (`rows`, for checksums).

`replay` rebuilds views in one database transaction: it empties them, reads their topics
from the beginning up to their current end (or to a point in time) with a consumer that
joins no group and commits nothing, and hands every event to the views' handlers through
the same `EventRouter.dispatch` the live consumer uses. Handlers get a `Unit` whose outbox
publishes nothing: an event a handler emits is counted and dropped. Nothing is claimed in
the processed-events table, so the live consumer's idempotency is left as it was. An event
a handler refuses (the live consumer dead-lettered it) is left out and listed. The
transaction commits only once everything up to the end was applied; until then readers
see the old view, and a failure leaves it untouched."""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from shared.messaging.connection import Bootstrap, client_config
from shared.messaging.decode import decode
from shared.messaging.envelope import Envelope
from shared.messaging.events import Event
from shared.messaging.failures import transient
from shared.messaging.router import EventRouter, Received
from shared.messaging.unit_of_work import Outbox, Unit
from shared.storage.db import writing

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class View:
    """A derived view: rebuildable from its topics alone."""

    name: str
    tables: tuple[str, ...]
    """The tables (or `table.column`s) it is kept in, as docs/replay.md lists them."""
    handlers: tuple[Callable[..., None], ...]
    """The handlers that build it; none may need anything but events and its own rows."""
    reset: Callable[[Session], None]
    """Empties the view (deletes its rows, or sets its columns back to their defaults)."""
    rows: Callable[[Session], Sequence[tuple[Any, ...]]]
    """The rows that define the view, in a stable order (surrogate keys left out)."""
    about: str = ""

    @property
    def topics(self) -> list[str]:
        return self.router().topics

    def router(self) -> EventRouter:
        return router_of([self])

    def checksum(self, session: Session) -> str:
        return checksum(self.rows(session))


def router_of(views: Iterable[View]) -> EventRouter:
    """One router with the handlers of every view (a handler shared by two views once)."""
    router = EventRouter()
    seen: set[Callable[..., None]] = set()
    for view in views:
        for handler in view.handlers:
            if handler not in seen:
                seen.add(handler)
                router.on(handler)
    return router


def checksum(rows: Iterable[tuple[Any, ...]]) -> str:
    """A digest of a view's rows: equal views, equal checksums."""
    digest = hashlib.sha256()
    count = 0
    for row in rows:
        digest.update(repr(tuple(_plain(value) for value in row)).encode())
        digest.update(b"\n")
        count += 1
    return f"{count}:{digest.hexdigest()[:16]}"


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bool):
        return int(value)
    return value


class ReplayOutbox(Outbox):
    """The outbox of a replay: an event a view handler emits is counted, never written,
    never published (the live consumer emitted it when it first applied the event)."""

    def __init__(self) -> None:  # no session, no table: nothing is ever written
        self.dropped = 0

    def emit(
        self,
        payload: Event,
        *,
        correlation_id: str | None = None,
        caused_by: Envelope | None = None,
    ) -> Envelope:
        self.dropped += 1
        return Envelope(type=payload.event_type, source="/replay", key=payload.event_key, data=b"")

    def flush(self) -> None:
        """Nothing to write."""


@dataclass
class Progress:
    """How far a replay got: records read of those to read, and how fast."""

    read: int = 0
    applied: int = 0
    """Events handed to the views' handlers."""
    skipped: int = 0
    """Records of types no view takes, and records no consumer could decode."""
    failed: list[str] = field(default_factory=list)
    """Events a handler refused (the live consumer dead-lettered them): where each is."""
    total: int = 0
    """Offsets from the first kept to the end (or to the time) on every partition; a
    compacted topic has fewer records than offsets."""
    lag: int = 0
    """Offsets left to read."""
    dropped: int = 0
    """Events the handlers emitted, dropped unpublished."""
    started: float = field(default_factory=time.monotonic)
    elapsed: float = 0.0

    @property
    def rate(self) -> float:
        return self.read / self.elapsed if self.elapsed > 0 else 0.0

    def line(self) -> str:
        return (
            f"read {self.read:,} of {self.total:,} records, lag {self.lag:,},"
            f" {self.rate:,.0f} records/s, applied {self.applied:,}"
            + (f", {len(self.failed):,} refused" if self.failed else "")
        )


class ReplayError(RuntimeError):
    """The replay could not finish; the views were left as they were."""


def targets(
    consumer: Consumer,
    topics: Sequence[str],
    until: datetime | None,
    timeout: float,
) -> dict[tuple[str, int], tuple[int, int]]:
    """For every partition of `topics`: (first offset kept, offset to read up to). The end
    is the partition's end now, or the first offset written at or after `until`."""
    metadata = consumer.list_topics(timeout=timeout)
    found: dict[tuple[str, int], tuple[int, int]] = {}
    for topic in topics:
        described = metadata.topics.get(topic)
        if described is None or described.error is not None:
            continue  # no such topic yet: nothing was ever published on it
        for partition in sorted(described.partitions):
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=timeout
            )
            found[(topic, partition)] = (low, high)
    if until is not None and found:
        millis = int(until.timestamp() * 1000)
        asked = [TopicPartition(t, p, millis) for (t, p) in found]
        for answer in consumer.offsets_for_times(asked, timeout=timeout):
            low, high = found[(answer.topic, answer.partition)]
            if answer.offset >= 0:  # else no record at or after `until`: read everything
                found[(answer.topic, answer.partition)] = (low, min(high, answer.offset))
    return found


@contextmanager
def _reader(bootstrap: Bootstrap, name: str) -> Iterator[Consumer]:
    """A consumer that is assigned partitions: it joins no group and commits nothing, so
    no group's offsets move."""
    consumer = Consumer(
        client_config(
            bootstrap,
            **{
                "group.id": f"replay-{name}-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
            },
        )
    )
    try:
        yield consumer
    finally:
        consumer.close()


def replay(
    views: Sequence[View],
    *,
    engine: Engine,
    bootstrap: Bootstrap,
    name: str,
    topic_prefix: str = "",
    until: datetime | None = None,
    batch_size: int = 1000,
    timeout: float = 30.0,
    on_progress: Callable[[Progress], None] | None = None,
    report_every: float = 1.0,
) -> Progress:
    """Rebuild `views` of the service `name` in one transaction of `engine`'s database.

    Reads the views' topics (`topic_prefix` + each) from the beginning to where they end
    once the views are emptied (or to `until`), applies every event a view takes, and
    commits. `on_progress` gets the progress about every `report_every` seconds and at
    the end. An event a handler refuses is left out and listed in `Progress.failed`.
    Raises `ReplayError` (the views unchanged) if the broker does not answer within
    `timeout` seconds or the database fails."""
    router = router_of(views)
    topics = [topic_prefix + topic for topic in router.topics]
    progress = Progress()
    outbox = ReplayOutbox()
    sessions: sessionmaker[Session] = sessionmaker(engine, expire_on_commit=False)
    with _reader(bootstrap, name) as consumer:
        with writing(engine), sessions.begin() as session:
            for view in views:
                view.reset(session)
            session.flush()
            # the ends are read after the views were emptied: whatever the live consumer
            # applied before that was published before it, so it is below the ends
            try:
                ends = targets(consumer, topics, until, timeout)
            except KafkaException as exc:
                raise ReplayError(f"the broker did not answer: {exc}") from exc
            reading = _Reading(consumer, router, Unit(session, outbox), topic_prefix, progress)
            reading.run(ends, batch_size, timeout, on_progress, report_every)
            progress.dropped = outbox.dropped
    progress.elapsed = time.monotonic() - progress.started
    if on_progress is not None:
        on_progress(progress)
    return progress


class _Reading:
    """One pass over the views' topics, inside the replay's transaction."""

    def __init__(
        self,
        consumer: Consumer,
        router: EventRouter,
        unit: Unit,
        topic_prefix: str,
        progress: Progress,
    ) -> None:
        self.consumer = consumer
        self.router = router
        self.unit = unit
        self.prefix = topic_prefix
        self.progress = progress

    def run(
        self,
        ends: dict[tuple[str, int], tuple[int, int]],
        batch_size: int,
        timeout: float,
        on_progress: Callable[[Progress], None] | None,
        report_every: float,
    ) -> None:
        progress = self.progress
        left = {place: end for place, (low, end) in ends.items() if end > low}
        position = {place: ends[place][0] for place in left}
        progress.total = sum(end - ends[place][0] for place, end in left.items())
        progress.lag = progress.total
        if not left:
            return
        self.consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in left])
        last_record = last_report = time.monotonic()
        while left:
            messages = self.consumer.consume(batch_size, 0.5)
            now = time.monotonic()
            if messages:
                last_record = now
            elif now - last_record > timeout:
                raise ReplayError(f"no record for {timeout:.0f}s with {progress.lag:,} to read")
            taken: list[Received[Any]] = []
            for message in messages:
                error = message.error()
                place = (message.topic() or "", message.partition() or 0)
                if error is not None:
                    if error.fatal():
                        raise ReplayError(str(error))
                    if error.code() == KafkaError._PARTITION_EOF:
                        left.pop(place, None)
                    continue
                offset = message.offset() or 0
                end = left.get(place)
                if end is None or offset >= end:
                    left.pop(place, None)  # past the end: the live consumer applies it
                    continue
                progress.read += 1
                position[place] = offset + 1
                if offset + 1 >= end:
                    del left[place]
                decoded = decode(message, self.router, (), self.prefix)
                if isinstance(decoded, Received):
                    taken.append(decoded)
                else:
                    progress.skipped += 1
            self._apply(taken)
            progress.lag = sum(end - position[place] for place, end in left.items())
            progress.elapsed = now - progress.started
            if on_progress is not None and now - last_report >= report_every:
                last_report = now
                on_progress(progress)
        self.consumer.unassign()

    def _apply(self, taken: list[Received[Any]]) -> None:
        """Apply a batch in a savepoint; if a handler fails, apply its events one by one,
        each in its own savepoint, and pass over the ones that fail (the live consumer
        dead-lettered them): one bad event harms only itself."""
        if not taken:
            return
        if self._try(taken):
            self.progress.applied += len(taken)
            return
        for item in taken:
            if self._try([item]):
                self.progress.applied += 1
            else:
                self.progress.failed.append(
                    f"{item.event.topic}[{item.event.partition}]@{item.event.offset}"
                    f" {item.event.type} {item.event.id}"
                )

    def _try(self, run: list[Received[Any]]) -> bool:
        session = self.unit.session
        try:
            with session.begin_nested():
                self.router.dispatch(self.unit, run)
                session.flush()
        except SQLAlchemyError as exc:
            if transient(exc):
                raise ReplayError(f"the database failed: {exc}") from exc
            log.info("replay: %d event(s) refused: %r", len(run), exc)
            return False
        except Exception as exc:  # a handler's bug or a value it refuses
            log.info("replay: %d event(s) refused: %r", len(run), exc)
            return False
        return True
