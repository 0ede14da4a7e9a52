"""The consumer loop: one consumer-group member in a background thread, fetching batches
for its `Applier` (shared.messaging.applying) to apply, rewinding after a database or
broker outage, and handing over what it applied when partitions move.

Offsets are stored only after the transaction that applied their events commits, and
auto-commit then commits them: an event is applied at least once, and its claim in the
processed-events table makes that effectively once."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from shared.messaging import spans
from shared.messaging.applying import Applier, Fatal, Rewind
from shared.messaging.connection import Bootstrap
from shared.messaging.fetch import consumer_config, index_of, next_batch, rewind
from shared.messaging.observe import IGNORED_CONSUMER, ConsumerObserver
from shared.messaging.producer import EventProducer
from shared.messaging.router import EventRouter
from shared.messaging.unit_of_work import UnitOfWork
from shared.storage.db import ProcessedEventMixin

log = logging.getLogger(__name__)


class ConsumerWorker(Applier):
    """Runs one consumer-group member in a background thread."""

    def __init__(
        self,
        *,
        name: str,
        bootstrap: Bootstrap,
        topics: Sequence[str],
        owned_topics: Sequence[str] = (),
        topic_prefix: str = "",
        router: EventRouter,
        uow: UnitOfWork,
        processed_model: type[ProcessedEventMixin],
        producer: EventProducer,
        dead_letter_topic: str,
        group_id: str | None = None,
        batch_size: int = 1000,
        linger: float = 0.005,
        max_attempts: int = 3,
        backoff: float = 0.1,
        config: dict[str, Any] | None = None,
        observer: ConsumerObserver = IGNORED_CONSUMER,
    ) -> None:
        super().__init__(
            name=name,
            router=router,
            uow=uow,
            processed_model=processed_model,
            producer=producer,
            dead_letter_topic=dead_letter_topic,
            owned_topics=owned_topics,
            topic_prefix=topic_prefix,
            max_attempts=max_attempts,
            backoff=backoff,
            observer=observer,
        )
        self._config = consumer_config(bootstrap, group_id or name, **(config or {}))
        self._topics = list(topics)
        self._batch_size = batch_size
        self._linger = linger
        self._thread: threading.Thread | None = None
        self.last_poll = 0.0
        self.assigned: set[tuple[str, int]] = set()
        """The partitions this member owns now."""
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
        spans.set_consumer_group(str(self._config["group.id"]))
        consumer = Consumer(self._config)

        def on_assign(c: Consumer, partitions: list[TopicPartition]) -> None:
            self.assigned |= {(p.topic, p.partition) for p in partitions}
            self._observer.assigned(len(self.assigned))

        def on_revoke(c: Consumer, partitions: list[TopicPartition]) -> None:
            self.assigned -= {(p.topic, p.partition) for p in partitions}
            self._observer.assigned(len(self.assigned))
            try:  # hand over exactly what was applied
                c.commit(asynchronous=False)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError._NO_OFFSET:
                    log.warning("commit on revoke failed: %s", exc)

        def on_lost(c: Consumer, partitions: list[TopicPartition]) -> None:
            self.assigned -= {(p.topic, p.partition) for p in partitions}
            self._observer.assigned(len(self.assigned))

        consumer.subscribe(self._topics, on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost)
        try:
            while not self._stop.is_set():
                self.last_poll = time.monotonic()
                batch = next_batch(consumer, self._batch_size, linger=self._linger)
                try:
                    self.process_batch(consumer, batch)
                except Rewind as exc:
                    self.last_error = str(exc.__cause__ or exc)
                    log.warning("%s: transient failure, rewinding: %s", self.name, self.last_error)
                    rewind(consumer, batch[index_of(batch, exc.message) :])
                    self._stop.wait(1.0)
                except Fatal:
                    raise
                except Exception as exc:  # never let one surprise end the loop
                    self.last_error = repr(exc)
                    log.exception("%s: unexpected failure, rewinding", self.name)
                    rewind(consumer, batch)
                    self._stop.wait(1.0)
        finally:
            consumer.close()  # commits stored offsets and leaves the group
