"""The explorer's eyes on Kafka: a consumer that reads every topic of the stack, an admin
client that lists the topics' offsets and the consumer groups, and for each group a
consumer that carries its id and never subscribes, which reads the group's committed
offsets (`committed()`: it joins no group and commits nothing). Not the admin client's
ListConsumerGroupOffsets: librdkafka's admin client dereferences a missing consumer group
when a broker answers it NOT_COORDINATOR (librdkafka issue #5040), and that killed the
explorer while a bench created and deleted groups; a consumer handles that answer.

It reads as a consumer group of its own (`<prefix>observer-explorer-<random>`, an
observer's group) and never commits, so it changes no other group's position and leaves
nothing behind; it starts `tail` records before each partition's end. It writes nothing."""

from __future__ import annotations

import logging
import re
import threading
import uuid
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

from shared.messaging.connection import Bootstrap, client_config
from tools.ops.explorer.model import REDRIVE_GROUP, ShopView

log = logging.getLogger(__name__)

_REGEX = set(".^$*+?()[]{}|\\")
OTHER_STACK = re.compile(r"^[a-z0-9]+-[0-9a-f]{10}-")
"""Topics and groups of stacks with a prefix of their own (tests make `e2e-1a2b3c4d5e-`):
the unprefixed stack's explorer leaves them out."""


def topic_pattern(prefix: str) -> str:
    """A subscription regex for every topic of the stack (new ones too); without a prefix,
    every topic but the broker's own (`__consumer_offsets`, ...)."""
    if not prefix:
        return "^[^_].*"
    return "^" + "".join("\\" + c if c in _REGEX else c for c in prefix) + ".*"


def ours(name: str, prefix: str) -> bool:
    """Whether a topic or group belongs to the stack with this prefix."""
    if prefix:
        return name.startswith(prefix)
    return not name.startswith("_") and not OTHER_STACK.match(name)


class Observer:
    """Two daemon threads feeding a ShopView: records, and every `refresh` seconds the
    offsets. Neither dies on a bad record or a broker outage; both stop on `stop()`."""

    def __init__(
        self,
        view: ShopView,
        bootstrap: Bootstrap,
        prefix: str = "",
        *,
        tail: int = 5000,
        refresh: float = 1.0,
        max_groups: int = 64,
    ) -> None:
        self.view = view
        self.bootstrap = bootstrap
        self.prefix = prefix
        self.tail = tail
        self.refresh = refresh
        self.max_groups = max_groups
        # an observer's group: on a secured cluster its ACL allows `<prefix>observer*`
        self.group_id = f"{prefix}observer-explorer-{uuid.uuid4().hex[:12]}"
        self.connected = threading.Event()
        """Set once the broker answered the first offset query."""
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._read, name="explorer-read", daemon=True),
            threading.Thread(target=self._watch, name="explorer-offsets", daemon=True),
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 10) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout)

    # -- records --------------------------------------------------------------------------

    def _read(self) -> None:
        consumer = Consumer(
            client_config(
                self.bootstrap,
                **{
                    "group.id": self.group_id,
                    "enable.auto.commit": False,
                    "enable.auto.offset.store": False,
                    "auto.offset.reset": "earliest",
                    "topic.metadata.refresh.interval.ms": 2000,
                    "fetch.wait.max.ms": 100,
                },
            )
        )

        def on_assign(c: Consumer, assigned: list[TopicPartition]) -> None:
            partitions = [tp for tp in assigned if ours(tp.topic, self.prefix)]
            for tp in partitions:
                try:
                    low, high = c.get_watermark_offsets(tp, timeout=5, cached=False)
                    tp.offset = max(low, high - self.tail)
                except KafkaException as exc:
                    log.warning("no watermarks for %s[%s]: %s", tp.topic, tp.partition, exc)
            c.assign(partitions)

        consumer.subscribe([topic_pattern(self.prefix)], on_assign=on_assign)
        try:
            while not self._stopping.is_set():
                try:
                    records = consumer.consume(500, 0.3)
                except KafkaException as exc:
                    log.warning("consume failed: %s", exc)
                    continue
                for record in records:
                    if record.error() is not None:
                        continue
                    try:
                        self.view.add(record)
                    except Exception:  # a record must never stop the page
                        log.exception("record %s[%s]@%s", *_where(record))
        finally:
            consumer.close()

    # -- offsets ----------------------------------------------------------------------------

    def _watch(self) -> None:
        admin = AdminClient(client_config(self.bootstrap))
        readers: dict[str, Consumer] = {}
        try:
            while not self._stopping.is_set():
                try:
                    topics = self._watermarks(admin)
                    self.view.set_offsets(topics, self._groups(admin, topics, readers))
                    self.connected.set()
                except Exception as exc:  # the broker is away: try again
                    log.warning("offsets: %s", exc)
                self._stopping.wait(self.refresh)
        finally:
            for reader in readers.values():
                reader.close()

    def _watermarks(self, admin: AdminClient) -> dict[str, dict[int, tuple[int, int]]]:
        metadata = admin.list_topics(timeout=5)
        partitions = [
            TopicPartition(name, p)
            for name, topic in metadata.topics.items()
            if ours(name, self.prefix) and topic.error is None
            for p in topic.partitions
        ]
        if not partitions:
            return {}
        ends: dict[str, dict[int, tuple[int, int]]] = {}
        low = admin.list_offsets({tp: OffsetSpec.earliest() for tp in partitions})
        high = admin.list_offsets({tp: OffsetSpec.latest() for tp in partitions})
        lows = {(tp.topic, tp.partition): f.result().offset for tp, f in low.items()}
        for tp, future in high.items():
            start = lows.get((tp.topic, tp.partition), 0)
            ends.setdefault(tp.topic, {})[tp.partition] = (start, future.result().offset)
        return ends

    def _groups(
        self,
        admin: AdminClient,
        topics: dict[str, dict[int, tuple[int, int]]],
        readers: dict[str, Consumer],
    ) -> dict[str, dict[str, Any]]:
        """Each chosen group's state and committed offsets on `topics`, through `readers`
        (one per group, kept while the group is listed, closed when it is gone)."""
        listed = admin.list_consumer_groups(request_timeout=5).result().valid
        chosen = {
            g.group_id: g
            for g in listed
            if g.group_id != self.group_id
            and not g.group_id.startswith(f"{self.prefix}observer")
            and (ours(g.group_id, self.prefix) or g.group_id.startswith(REDRIVE_GROUP))
        }
        chosen = dict(list(chosen.items())[: self.max_groups])
        for gone in set(readers) - set(chosen):
            readers.pop(gone).close()
        asked = [TopicPartition(t, p) for t, partitions in topics.items() for p in partitions]
        groups: dict[str, dict[str, Any]] = {}
        for group_id, listing in chosen.items():
            reader = readers.get(group_id)
            if reader is None:
                reader = readers[group_id] = Consumer(
                    client_config(
                        self.bootstrap, **{"group.id": group_id, "enable.auto.commit": False}
                    )
                )
            try:
                answer = reader.committed(asked, timeout=5) if asked else []
            except KafkaException:
                continue
            offsets = {(tp.topic, tp.partition): tp.offset for tp in answer if tp.offset >= 0}
            if offsets:
                state = getattr(listing.state, "name", str(listing.state))
                groups[group_id] = {"state": state.lower(), "offsets": offsets}
        return groups


def _where(record: Any) -> tuple[Any, Any, Any]:
    return record.topic(), record.partition(), record.offset()
