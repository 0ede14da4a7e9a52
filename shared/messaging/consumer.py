"""The consumer loop: the handlers of an `EventRouter` (shared.messaging.router) on a real broker,
applied at least once, effectively once.

Each message is decoded, claimed in the processed-events table and handled in one DB
transaction; only after that commits is its offset stored (auto-commit then commits it).
Malformed messages, unknown types and handlers that keep failing are dead-lettered and the
loop moves on; a database or broker outage rewinds and waits instead."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError, OperationalError

from shared.messaging.deadletter import DeadLetter, Reason, dead_letter
from shared.messaging.envelope import Envelope, InvalidEnvelope
from shared.messaging.idempotency import Claim, claim_many
from shared.messaging.producer import DeliveryError, EventProducer
from shared.messaging.router import EventRouter, Received
from shared.messaging.unit_of_work import UnitOfWork
from shared.storage.db import ProcessedEventMixin

log = logging.getLogger(__name__)

_SQLITE_TRANSIENT = ("locked", "busy", "disk i/o", "unable to open")
_DEADLOCK = "40P01"


def _transient(exc: Exception) -> bool:
    """An outage to wait out (broker, connection, lock), not a bug to dead-letter. SQLite
    reports bugs ("no such table") as OperationalError too, so only its lock and I/O
    errors count."""
    if isinstance(exc, DeliveryError | KafkaException):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, OperationalError):
        if "sqlite" in type(exc.orig).__module__:
            return any(word in str(exc.orig).lower() for word in _SQLITE_TRANSIENT)
        return True
    return False


def _deadlock(exc: Exception) -> bool:
    return getattr(getattr(exc, "orig", None), "sqlstate", None) == _DEADLOCK


class _Fatal(KafkaException):
    """The client cannot go on (e.g. fenced): end the loop; /ready reports it."""


class _Rewind(Exception):
    """Stop the batch at `message` and consume it again after a pause."""

    def __init__(self, message: Message) -> None:
        super().__init__()
        self.message = message


_SKIPPED = object()
_CLIENT_ERROR = object()
NEW = Claim.NEW


def consumer_config(bootstrap: str, group_id: str, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "group.id": group_id,
        "enable.auto.commit": True,
        "enable.auto.offset.store": False,  # store only after the DB transaction commits
        "auto.commit.interval.ms": 1000,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 1_000,
        # Notice a subscribed topic created after start within seconds, not minutes.
        "topic.metadata.refresh.interval.ms": 5_000,
        # Let the broker gather a few ms of records per fetch instead of answering each
        # new record with its own response: fewer, larger requests.
        "fetch.wait.max.ms": 10,
        "fetch.min.bytes": 65_536,
    }
    config.update(overrides)
    return config


class ConsumerWorker:
    """Runs one consumer-group member in a background thread."""

    def __init__(
        self,
        *,
        name: str,
        bootstrap: str,
        topics: Sequence[str],
        owned_topics: Sequence[str] = (),
        router: EventRouter,
        uow: UnitOfWork,
        processed_model: type[ProcessedEventMixin],
        producer: EventProducer,
        dead_letter_topic: str,
        group_id: str | None = None,
        batch_size: int = 1000,
        max_attempts: int = 3,
        backoff: float = 0.1,
        config: dict[str, Any] | None = None,
        after_commit: Callable[[Envelope], None] | None = None,
    ) -> None:
        """`after_commit` runs between a handler's commit and its offset store (tests use
        it to crash there)."""
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.name = name
        self._config = consumer_config(bootstrap, group_id or name, **(config or {}))
        self._topics = list(topics)
        self._owned = frozenset(owned_topics)
        self._router = router
        self._uow = uow
        self._processed = processed_model
        self._producer = producer
        self._dlq_topic = dead_letter_topic
        self._batch_size = batch_size
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._after_commit = after_commit
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_poll = 0.0
        self.assigned: set[tuple[str, int]] = set()
        """The partitions this member owns now."""
        self.applied = 0
        self.dead_lettered = 0
        self.skipped = 0
        """Events of a type no handler takes, on a topic another service owns."""
        self.last_error: str | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"consumer-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 15) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        consumer = Consumer(self._config)

        def on_assign(c: Consumer, partitions: list[TopicPartition]) -> None:
            self.assigned |= {(p.topic, p.partition) for p in partitions}

        def on_revoke(c: Consumer, partitions: list[TopicPartition]) -> None:
            self.assigned -= {(p.topic, p.partition) for p in partitions}
            try:  # hand over exactly what was applied
                c.commit(asynchronous=False)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError._NO_OFFSET:
                    log.warning("commit on revoke failed: %s", exc)

        def on_lost(c: Consumer, partitions: list[TopicPartition]) -> None:
            self.assigned -= {(p.topic, p.partition) for p in partitions}

        consumer.subscribe(self._topics, on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost)
        try:
            while not self._stop.is_set():
                self.last_poll = time.monotonic()
                batch = _next_batch(consumer, self._batch_size)
                try:
                    self._process_batch(consumer, batch)
                except _Rewind as exc:
                    self.last_error = str(exc.__cause__ or exc)
                    log.warning("%s: transient failure, rewinding: %s", self.name, self.last_error)
                    _rewind(consumer, batch[_index_of(batch, exc.message) :])
                    self._stop.wait(1.0)
                except _Fatal:
                    raise
                except Exception as exc:  # never let one surprise end the loop
                    self.last_error = repr(exc)
                    log.exception("%s: unexpected failure, rewinding", self.name)
                    _rewind(consumer, batch)
                    self._stop.wait(1.0)
        finally:
            consumer.close()  # commits stored offsets and leaves the group

    def _process(self, consumer: Consumer, message: Message) -> None:
        """Handle one record on its own (tests drive the loop through this)."""
        self._process_batch(consumer, [message])

    def _process_batch(self, consumer: Consumer, batch: Sequence[Message]) -> None:
        """Decode every record once; apply each run of well-formed events in one
        transaction; dead-letter, skip or pass over the others in their place."""
        run: list[Received[Any]] = []
        for message in batch:
            decoded = self._decode(message)
            if isinstance(decoded, Received):
                run.append(decoded)
                continue
            self._apply_run(consumer, run)
            run = []
            if decoded is _CLIENT_ERROR:
                continue
            if isinstance(decoded, DeadLetter):
                self._dead_letter(message, decoded)
            _store(consumer, message)
        self._apply_run(consumer, run)

    def _decode(self, message: Message) -> Received[Any] | DeadLetter | object:
        """The event and its validated payload; or the dead letter it makes; or
        `_SKIPPED` (another service's event that this one does not handle), or
        `_CLIENT_ERROR` (not a record)."""
        error = message.error()
        if error is not None:
            if error.fatal():
                raise _Fatal(error)
            log.info("%s: %s", self.name, error)
            return _CLIENT_ERROR
        try:
            event = Envelope.from_message(message, check_json=False)
        except InvalidEnvelope as exc:
            return DeadLetter(Reason.INVALID_ENVELOPE, str(exc))
        except Exception as exc:  # anything else about this record that cannot be read
            return DeadLetter(Reason.INVALID_ENVELOPE, repr(exc))
        route = self._router.routes.get(event.type)
        if route is None:
            if message.topic() not in self._owned:
                self.skipped += 1  # another service's event, for other readers
                return _SKIPPED
            return DeadLetter(Reason.UNKNOWN_TYPE, f"unknown event type {event.type!r}")
        try:
            payload = route.model.model_validate_json(event.data)
        except ValidationError as exc:
            try:
                orjson.loads(event.data)
            except orjson.JSONDecodeError as not_json:
                return DeadLetter(Reason.INVALID_ENVELOPE, f"value is not JSON: {not_json}")
            return DeadLetter(Reason.INVALID_PAYLOAD, str(exc))
        return Received(event, payload, message)

    def _transaction(
        self, run: Sequence[Received[Any]], underway: list[Any] | None = None
    ) -> list[Claim]:
        """Claim the run's events and hand the new ones to their handlers, in one
        transaction; return each event's claim."""
        with self._uow() as unit:
            outcomes = claim_many(
                unit.session, self._processed, self.name, [item.event for item in run]
            )
            fresh = [item for item, outcome in zip(run, outcomes, strict=True) if outcome is NEW]
            self._router.dispatch(unit, fresh, underway)
            if underway is not None:
                underway.clear()  # what fails now fails at commit
        return outcomes

    def _apply_run(self, consumer: Consumer, run: list[Received[Any]]) -> None:
        """Apply a run of events in one transaction, then store their offsets. If a
        handler fails, apply what came before it as a run, retry it alone and go on after
        it; if the culprit is unknown (a batch handler, the commit), go one at a time."""
        if not run:
            return
        if len(run) == 1:
            self._apply_alone(run[0])
            _store(consumer, run[0].message)
            return
        underway: list[Any] = []
        try:
            outcomes = self._transaction(run, underway)
        except Exception as exc:
            if _transient(exc) and not _deadlock(exc):
                raise _Rewind(run[0].message) from exc
            if not underway or _deadlock(exc):
                for item in run:
                    self._apply_alone(item)
                    _store(consumer, item.message)
                return
            at = next(i for i, item in enumerate(run) if item is underway[0])
            self._apply_run(consumer, run[:at])
            self._apply_alone(run[at], failed_once=exc)
            _store(consumer, run[at].message)
            self._apply_run(consumer, run[at + 1 :])
            return
        for item, outcome in zip(run, outcomes, strict=True):
            self._settle(item, outcome)
        for item in run:
            _store(consumer, item.message)

    def _apply_alone(self, item: Received[Any], failed_once: Exception | None = None) -> None:
        """Apply one event, retrying a failing handler with backoff, then dead-letter it.
        `failed_once`: the first attempt already failed."""
        first = 1
        if failed_once is not None:
            self._log_failure(item.event, 1, failed_once)
            self._stop.wait(self._backoff)
            first = 2
        failure: Exception | None = failed_once
        for attempt in range(first, self._max_attempts + 1):
            try:
                (outcome,) = self._transaction([item])
            except Exception as exc:
                if _transient(exc) and not _deadlock(exc):
                    raise _Rewind(item.message) from exc
                failure = exc  # a bug or bad data in the handler
            else:
                self._settle(item, outcome)
                return
            self._log_failure(item.event, attempt, failure)
            if attempt < self._max_attempts:
                self._stop.wait(self._backoff * 2 ** (attempt - 1))
        self._dead_letter(item.message, DeadLetter(Reason.HANDLER_FAILED, repr(failure)))

    def _log_failure(self, event: Envelope, attempt: int, failure: Exception) -> None:
        log.warning(
            "%s: handler for %s failed (attempt %d/%d): %r",
            self.name,
            event.type,
            attempt,
            self._max_attempts,
            failure,
        )

    def _settle(self, item: Received[Any], outcome: Claim) -> None:
        """After the commit: count it, dead-letter a conflicting duplicate, run the hook."""
        if outcome is Claim.CONFLICT:
            self._dead_letter(
                item.message,
                DeadLetter(
                    Reason.CONFLICT, f"event id {item.event.id} was applied with another payload"
                ),
            )
        elif outcome is NEW:
            self.applied += 1
        if self._after_commit:
            self._after_commit(item.event)

    def _dead_letter(self, message: Message, letter: DeadLetter) -> None:
        try:
            dead_letter(self._producer, self._dlq_topic, message, self.name, letter)
        except DeliveryError as exc:
            raise _Rewind(message) from exc
        self.dead_lettered += 1


def _index_of(batch: Sequence[Message], message: Message) -> int:
    return next(i for i, candidate in enumerate(batch) if candidate is message)


def _store(consumer: Consumer, message: Message) -> None:
    try:
        consumer.store_offsets(message=message)
    except KafkaException as exc:  # the partition was revoked meanwhile: its new owner
        log.info("offset not stored: %s", exc)  # re-reads; claims make that harmless


def _next_batch(consumer: Consumer, size: int, wait: float = 0.5) -> list[Message]:
    """Wait for one message, then take whatever else is already fetched, up to `size`.

    (`consume(n, timeout)` would wait out the whole timeout whenever fewer than n are
    there, adding its timeout to the latency of every quiet moment.)"""
    first = consumer.poll(wait)
    if first is None:
        return []
    return [first, *consumer.consume(size - 1, 0)] if size > 1 else [first]


def _rewind(consumer: Consumer, unprocessed: Sequence[Message]) -> None:
    """Seek every partition in `unprocessed` back to its first message not yet applied."""
    first: dict[tuple[str, int], int] = {}
    for message in unprocessed:
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        if message.error() is None and topic is not None and partition is not None:
            first.setdefault((topic, partition), offset or 0)
    for (topic, partition), offset in first.items():
        try:
            consumer.seek(TopicPartition(topic, partition, offset))
        except KafkaException as exc:  # revoked meanwhile: the next owner starts there anyway
            log.info("seek %s[%d] failed: %s", topic, partition, exc)
