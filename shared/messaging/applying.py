"""Applying what the consumer loop fetched, at least once and effectively once: each run
of events claimed and handled in one transaction, offsets stored after the commit, a
failing handler retried alone and then dead-lettered, a record that is no event this
service takes skipped or dead-lettered in its place."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message

from shared.messaging.deadletter import DeadLetter, Reason, dead_letter
from shared.messaging.decode import decode
from shared.messaging.envelope import H_TYPE, Envelope
from shared.messaging.failures import deadlock, transient
from shared.messaging.fetch import store
from shared.messaging.idempotency import Claim, claim_many
from shared.messaging.observe import IGNORED_CONSUMER, ConsumerObserver
from shared.messaging.producer import DeliveryError, EventProducer
from shared.messaging.router import EventRouter, Received
from shared.messaging.unit_of_work import UnitOfWork
from shared.storage.db import ProcessedEventMixin

log = logging.getLogger(__name__)


class Fatal(KafkaException):
    """The client cannot go on (e.g. fenced): end the loop; /ready reports it."""


class Rewind(Exception):
    """Stop the batch at `message` and consume it again after a pause."""

    def __init__(self, message: Message) -> None:
        super().__init__()
        self.message = message


NEW = Claim.NEW
OTHER = "other"
"""The type reported for records that are not events this service handles, so that
the types reported stay the few the service knows."""
EMPTY: Mapping[int, list[Message]] = {}


class Applier:
    """Applies fetched batches of records for the consumer `name` (its group member's
    name, and the consumer its claims are made for)."""

    def __init__(
        self,
        *,
        name: str,
        router: EventRouter,
        uow: UnitOfWork,
        processed_model: type[ProcessedEventMixin],
        producer: EventProducer,
        dead_letter_topic: str,
        owned_topics: Sequence[str] = (),
        topic_prefix: str = "",
        max_attempts: int = 3,
        backoff: float = 0.1,
        observer: ConsumerObserver = IGNORED_CONSUMER,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.name = name
        self._owned = frozenset(owned_topics)
        self._prefix = topic_prefix
        """An event is taken only from its own topic: `topic_prefix` + its model's topic."""
        self._router = router
        self._uow = uow
        self._processed = processed_model
        self._producer = producer
        self._dlq_topic = dead_letter_topic
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._stop = threading.Event()
        """Set when the consumer stops: backoff waits end early."""
        self.applied = 0
        self.dead_lettered = 0
        self.skipped = 0
        """Events of a type no handler takes, on a topic another service owns."""
        self._observer = observer
        self._timed = None if observer is IGNORED_CONSUMER else observer.handled
        self._applied_types: dict[str, int] = {}
        """Events applied since the last report, by type."""

    def process_batch(self, consumer: Consumer, batch: Sequence[Message]) -> None:
        """Decode every record once; apply each run of well-formed events in one
        transaction; dead-letter, skip or pass over the others in their place; store the
        offset of each record once it is dealt with. Raises `Rewind` to have the loop
        consume a record again after a pause, `Fatal` to end it.

        A record skipped (a type no handler takes, as `order-confirmed` is to inventory)
        does not end the run: events of other types share the topic, and a run cut at
        each would cost a transaction per event. Its offset is stored right after that of
        the event before it, once that is applied."""
        run: list[Received[Any]] = []
        after: dict[int, list[Message]] = {}
        """Records skipped after an event of the run (by the event's `id()`)."""
        consumed: dict[tuple[str, str], int] = {}
        skipped: dict[str, int] = {}
        for message in batch:
            error = message.error()
            if error is not None:  # a notice from the client, not a record
                if error.fatal():
                    raise Fatal(error)
                log.info("%s: %s", self.name, error)
                continue
            topic = message.topic() or ""
            decoded = decode(message, self._router, self._owned, self._prefix)
            if isinstance(decoded, Received):
                run.append(decoded)
                counted = (topic, decoded.event.type)
            elif isinstance(decoded, DeadLetter):
                self._apply_run(consumer, run, after)
                run, after = [], {}
                counted = (topic, self._known_type(message))
                self._dead_letter(message, decoded)
                store(consumer, message)
            else:
                counted = (topic, OTHER)
                self.skipped += 1
                skipped[topic] = skipped.get(topic, 0) + 1
                if run:
                    after.setdefault(id(run[-1]), []).append(message)
                else:
                    store(consumer, message)
            consumed[counted] = consumed.get(counted, 0) + 1
        self._apply_run(consumer, run, after)
        self._report(consumed, skipped)

    def _report(self, consumed: dict[tuple[str, str], int], skipped: dict[str, int]) -> None:
        """Tell the observer what one batch did."""
        observer = self._observer
        if consumed:
            observer.consumed(consumed)
        for topic, count in skipped.items():
            observer.skipped(topic, count)
        if self._applied_types:
            observer.applied(self._applied_types)
            self._applied_types = {}

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
            self._router.dispatch(unit, fresh, underway, self._timed)
            if underway is not None:
                underway.clear()  # what fails now fails at commit
        return outcomes

    def _apply_run(
        self,
        consumer: Consumer,
        run: list[Received[Any]],
        after: Mapping[int, list[Message]] = EMPTY,
    ) -> None:
        """Apply a run of events in one transaction, then store their offsets, each
        followed by those of the records skipped `after` it. If a handler fails, apply
        what came before it as a run, retry it alone and go on after it; if the culprit
        is unknown (a batch handler, the commit), go one at a time."""
        if not run:
            return
        if len(run) == 1:
            self._apply_alone(run[0])
            _store(consumer, run[0], after)
            return
        underway: list[Any] = []
        try:
            outcomes = self._transaction(run, underway)
        except Exception as exc:
            if transient(exc) and not deadlock(exc):
                raise Rewind(run[0].message) from exc
            if not underway or deadlock(exc):
                for item in run:
                    self._apply_alone(item)
                    _store(consumer, item, after)
                return
            at = next(i for i, item in enumerate(run) if item is underway[0])
            self._apply_run(consumer, run[:at], after)
            self._apply_alone(run[at], failed_once=exc)
            _store(consumer, run[at], after)
            self._apply_run(consumer, run[at + 1 :], after)
            return
        for item, outcome in zip(run, outcomes, strict=True):
            self._settle(item, outcome)
        for item in run:
            _store(consumer, item, after)

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
                if transient(exc) and not deadlock(exc):
                    raise Rewind(item.message) from exc
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
        """After the commit, before the offset is stored: count it, dead-letter a
        conflicting duplicate."""
        if outcome is Claim.CONFLICT:
            self._dead_letter(
                item.message,
                DeadLetter(
                    Reason.CONFLICT, f"event id {item.event.id} was applied with another payload"
                ),
            )
        elif outcome is NEW:
            self.applied += 1
            applied, event_type = self._applied_types, item.event.type
            applied[event_type] = applied.get(event_type, 0) + 1

    def _dead_letter(self, message: Message, letter: DeadLetter) -> None:
        try:
            dead_letter(self._producer, self._dlq_topic, message, self.name, letter)
        except DeliveryError as exc:
            raise Rewind(message) from exc
        self.dead_lettered += 1
        self._observer.dead_lettered(self._known_type(message), letter.reason)

    def _known_type(self, message: Message) -> str:
        """The record's event type if this service handles it, else OTHER."""
        headers = message.headers() or []
        for name, value in headers.items() if isinstance(headers, dict) else headers:
            if name == H_TYPE:
                text = value.decode(errors="replace") if isinstance(value, bytes) else value
                return text if text in self._router.routes else OTHER
        return OTHER


def _store(consumer: Consumer, item: Received[Any], after: Mapping[int, list[Message]]) -> None:
    """Store an applied event's offset, then those of the records skipped after it."""
    store(consumer, item.message)
    for message in after.get(id(item), ()):
        store(consumer, message)
