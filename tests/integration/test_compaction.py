"""State topics are compacted on a real broker: topics made with `TOPICS`' settings carry
them, and once the log cleaner has run, a reader from the start finds exactly the newest
record of every key (here inventory's `stock-changed`, the newest version per product).

The test topic gets segments that close after 100 ms and a cleaner that starts at 1 %
dirty, so compaction runs within the broker's cleaner back-off (15 s) instead of days."""

from __future__ import annotations

import time

import orjson
import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, ConfigResource  # type: ignore[attr-defined]

from services.inventory.events import StockChanged
from shared.messaging import tracing
from shared.messaging.producer import EventProducer
from shared.messaging.topics import TOPICS, ensure_topics, topic_configs
from tests.helpers import eventually, unique

pytestmark = pytest.mark.integration

PRODUCTS = [f"product-{n}" for n in range(6)]
VERSIONS = 5
QUICK = {"segment.ms": 100, "min.cleanable.dirty.ratio": "0.01"}
"""On the test topic only: a segment closes 100 ms after its first record (the cleaner
never touches the open one), and any dirt at all is worth cleaning."""


def stock_changed(product_id: str, version: int) -> StockChanged:
    return StockChanged(product_id=product_id, available=10 * version, version=version)


def payload(message: Message) -> dict[str, object]:
    value = message.value()
    assert value is not None
    parsed: dict[str, object] = orjson.loads(value)
    return parsed


def read_all(bootstrap: str, topic: str, timeout: float = 20) -> list[Message]:
    """Every record `topic` holds now, from each partition's first to its end offset."""
    reader = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": unique("reader"), "enable.auto.commit": False}
    )
    try:
        partitions = reader.list_topics(topic, timeout=timeout).topics[topic].partitions
        ends = {}
        for partition in partitions:
            low, high = reader.get_watermark_offsets(TopicPartition(topic, partition), timeout)
            if high > low:
                ends[partition] = high
        reader.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        records: list[Message] = []
        deadline = time.monotonic() + timeout
        while ends:
            assert time.monotonic() < deadline, f"{topic}: partitions {sorted(ends)} unread"
            for message in reader.consume(500, 0.2):
                if message.error() is not None:
                    continue
                records.append(message)
                partition, offset = message.partition(), message.offset()
                if partition in ends and offset is not None and offset + 1 >= ends[partition]:
                    del ends[partition]
        return records
    finally:
        reader.close()


def applied_settings(bootstrap: str, topic: str) -> dict[str, str]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    (future,) = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)]).values()
    entries = future.result(30)
    return {key: entries[key].value for key in ("cleanup.policy", "retention.ms")}


def test_every_stack_topic_is_made_with_the_tables_policy_and_retention(
    kafka_bootstrap: str,
) -> None:
    prefix = unique("settings") + "-"
    configs = topic_configs(prefix)
    ensure_topics(kafka_bootstrap, list(configs), configs=configs)
    for name, policy in TOPICS.items():
        assert applied_settings(kafka_bootstrap, prefix + name) == {
            "cleanup.policy": policy.cleanup_policy,
            "retention.ms": str(policy.config()["retention.ms"]),
        }, name


def test_compaction_keeps_the_newest_stock_changed_of_every_product(kafka_bootstrap: str) -> None:
    topic = unique("compaction") + "-stock-changes"
    config = {**TOPICS["stock-changes"].config(), **QUICK}
    ensure_topics(kafka_bootstrap, [topic], configs={topic: config})
    producer = EventProducer(kafka_bootstrap)

    def publish(product_id: str, version: int) -> None:
        event = stock_changed(product_id, version)
        envelope = tracing.new_event(
            event.event_type, event.event_key, event, source="/services/inventory"
        )
        producer.publish(topic, envelope)

    for version in range(1, VERSIONS + 1):
        for product_id in PRODUCTS:
            publish(product_id, version)
    total = VERSIONS * len(PRODUCTS)
    assert len(read_all(kafka_bootstrap, topic)) == total
    rolls = Producer({"bootstrap.servers": kafka_bootstrap})

    def compacted() -> list[Message]:
        # A record on each partition after its segment's 100 ms closes that segment: the
        # cleaner takes only closed ones.
        for partition in range(3):
            rolls.produce(topic, key=b"roll", value=b"{}", partition=partition)
        assert rolls.flush(10) == 0
        ours = [r for r in read_all(kafka_bootstrap, topic) if r.key() != b"roll"]
        assert len(ours) == len(PRODUCTS), f"{len(ours)} records of {len(PRODUCTS)} products"
        return ours

    try:
        kept = eventually(compacted, timeout=120, interval=1, message="compaction")
    finally:
        producer.close()
    newest = {(r.key() or b"").decode(): payload(r) for r in kept}
    assert newest == {
        product_id: stock_changed(product_id, VERSIONS).model_dump() for product_id in PRODUCTS
    }
    assert applied_settings(kafka_bootstrap, topic)["cleanup.policy"] == "compact"


def test_the_broker_refuses_a_record_without_a_key_on_a_state_topic(kafka_bootstrap: str) -> None:
    """Nothing keyless can land where only the newest record per key is kept."""
    prefix = unique("keyless") + "-"
    configs = topic_configs(prefix)
    names = [prefix + "users", prefix + "orders"]
    ensure_topics(kafka_bootstrap, names, configs=configs)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    errors: dict[str, object] = {}
    for topic in names:
        producer.produce(
            topic, b"{}", on_delivery=lambda error, _m, topic=topic: errors.update({topic: error})
        )
    assert producer.flush(30) == 0
    refused = errors[prefix + "users"]
    assert isinstance(refused, KafkaError) and refused.code() == KafkaError.INVALID_RECORD
    assert errors[prefix + "orders"] is None
