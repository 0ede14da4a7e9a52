"""State topics are compacted on a real broker: topics made with `TOPICS`' settings carry
them, and once the log cleaner has run, a reader from the start finds exactly the newest
record of every key (here inventory's `stock-changed`, the newest version per product),
from which a fresh consumer rebuilds the view it keeps (product's availability), and so
does the replay command (`python -m tools.replay product`), to the same view.

The test topic gets segments that close after 100 ms and a cleaner that starts at 1 %
dirty, so compaction runs within the broker's cleaner back-off (15 s) instead of days."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

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
from sqlalchemy import select, update

from services.inventory.events import StockChanged
from services.product.config import ProductSettings
from services.product.handlers import create_product
from services.product.main import SPEC as PRODUCT
from services.product.models import Product
from services.product.views import VIEWS as PRODUCT_VIEWS
from shared.messaging import tracing
from shared.messaging.envelope import Envelope
from shared.messaging.topics import TOPICS, ensure_topics, topic_configs
from shared.runtime.service import ServiceRuntime
from shared.storage.migrations import upgrade
from tests.helpers import eventually, new_anchor, unique
from tools.ops import replay as replay_command

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


class StockHistory:
    """Inventory's `stock-changed` events on a compacted topic of their own that closes
    its segments quickly; `available(product, version)` says what each one carries."""

    def __init__(
        self, bootstrap: str, topic: str, available: Callable[[str, int], int] | None = None
    ) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.available = available or (lambda _product, version: 10 * version)
        config = {**TOPICS["stock-changes"].config(), **QUICK}
        ensure_topics(bootstrap, [topic], configs={topic: config})
        self.producer = Producer({"bootstrap.servers": bootstrap})
        self.rolls = 0

    def event(self, product_id: str, version: int) -> Envelope:
        change = StockChanged(
            product_id=product_id, available=self.available(product_id, version), version=version
        )
        return tracing.new_event(
            change.event_type, change.event_key, change, source="/services/inventory"
        )

    def send(self, event: Envelope, partition: int = -1) -> None:
        self.producer.produce(
            self.topic, event.data, event.key.encode(), partition, headers=event.headers()
        )

    def publish(self, products: Sequence[str], versions: int) -> None:
        for version in range(1, versions + 1):
            for product_id in products:
                self.send(self.event(product_id, version))
        assert self.producer.flush(30) == 0

    def compacted(self, products: Sequence[str]) -> list[Message]:
        """Every product's records once the cleaner has left one of each (or fail)."""

        def once() -> list[Message]:
            # A record on each partition after its segment's 100 ms closes that segment:
            # the cleaner takes only closed ones. It is a stock-changed of no product.
            self.rolls += 1
            for partition in range(3):
                self.send(self.event(ROLL, self.rolls), partition)
            assert self.producer.flush(10) == 0
            ours = [r for r in read_all(self.bootstrap, self.topic) if r.key() != ROLL.encode()]
            assert len(ours) == len(products), f"{len(ours)} records of {len(products)} products"
            return ours

        return eventually(once, timeout=120, interval=1, message="compaction")


ROLL = "no-such-product"


def test_compaction_keeps_the_newest_stock_changed_of_every_product(kafka_bootstrap: str) -> None:
    history = StockHistory(kafka_bootstrap, unique("compaction") + "-stock-changes")
    history.publish(PRODUCTS, VERSIONS)
    assert len(read_all(kafka_bootstrap, history.topic)) == VERSIONS * len(PRODUCTS)
    kept = history.compacted(PRODUCTS)
    newest = {(r.key() or b"").decode(): payload(r) for r in kept}
    assert newest == {
        product_id: stock_changed(product_id, VERSIONS).model_dump() for product_id in PRODUCTS
    }
    assert applied_settings(kafka_bootstrap, history.topic)["cleanup.policy"] == "compact"


def product_service(
    kafka_bootstrap: str, database_url: str, prefix: str
) -> tuple[ServiceRuntime, list[str]]:
    """A product service on its own topics and group, not started, with six products."""
    settings = ProductSettings(
        database_url=database_url,
        topic_prefix=prefix,
        consumer_group=unique("product"),
        kafka_bootstrap_servers=kafka_bootstrap,
        keyset_public_key=new_anchor(),
    )
    runtime = ServiceRuntime(PRODUCT, settings)
    upgrade(runtime.engine, PRODUCT.migrations)
    with runtime.uow() as unit:
        products = [create_product(unit, f"gear {n}", 100).id for n in range(6)]
    return runtime, products


def test_after_compaction_a_fresh_consumer_rebuilds_products_availability(
    kafka_bootstrap: str, database_url: str
) -> None:
    """Product's `in_stock` is a view of `stock-changes`: a product service that reads the
    compacted topic from the start, in a group of its own, ends with every product's
    newest availability. The newest version says the opposite of every older one, so a
    view built from anything but the newest record is wrong."""
    prefix = unique("rebuild") + "-"
    runtime, products = product_service(kafka_bootstrap, database_url, prefix)
    even = set(products[::2])

    def available(product_id: str, version: int) -> int:
        newest_in_stock = product_id in even
        return 3 if (version == VERSIONS) == newest_in_stock else 0

    history = StockHistory(kafka_bootstrap, prefix + "stock-changes", available)
    history.publish(products, VERSIONS)
    kept = history.compacted(products)
    assert {payload(r)["version"] for r in kept} == {VERSIONS}
    runtime.start()
    try:

        def rebuilt() -> bool:
            with runtime.uow.read() as unit:
                rows = unit.session.execute(select(Product.id, Product.in_stock)).all()
            assert dict(rows) == {p: p in even for p in products}
            return True

        eventually(rebuilt, timeout=60, message="product's availability rebuilt")
    finally:
        runtime.stop()


def test_after_compaction_the_replay_command_rebuilds_the_view_a_fresh_consumer_builds(
    kafka_bootstrap: str,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`python -m tools.replay product` (tools/ops/replay.py's `main`, as the command runs
    it) on a corrupted availability, once the cleaner has left only the newest
    `stock-changed` of each product: it rebuilds exactly the view a fresh consumer (an
    emptied view, a group of its own, the topic from the start) builds from the same
    compacted topic."""
    prefix = unique("replay-compacted") + "-"
    runtime, products = product_service(kafka_bootstrap, database_url, prefix)
    odd = set(products[1::2])

    def available(product_id: str, version: int) -> int:
        return 5 if (version == VERSIONS) == (product_id in odd) else 0

    history = StockHistory(kafka_bootstrap, prefix + "stock-changes", available)
    history.publish(products, VERSIONS)
    assert {payload(r)["version"] for r in history.compacted(products)} == {VERSIONS}
    (view,) = PRODUCT_VIEWS

    def availability() -> dict[str, tuple[bool, int]]:
        with runtime.uow.read() as unit:
            rows = unit.session.execute(select(Product.id, Product.in_stock, Product.stock_version))
            return {row[0]: (row[1], row[2]) for row in rows}

    def view_checksum() -> str:
        with runtime.uow.read() as unit:
            return view.checksum(unit.session)

    with runtime.uow() as unit:  # wrong and newer than anything on the topic
        unit.session.execute(update(Product).values(in_stock=Product.id.in_(odd), stock_version=99))
    monkeypatch.setenv("TOPIC_PREFIX", prefix)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("AUTH_KEYSET_PUBLIC_KEY", runtime.settings.keyset_public_key)
    assert replay_command.main(["product", "--database-url", database_url]) == 0
    printed = capsys.readouterr().out
    assert "published nothing" in printed and "availability" in printed
    assert availability() == {p: (p in odd, VERSIONS) for p in products}
    replayed = view_checksum()

    with runtime.uow() as unit:  # a fresh consumer's start: the view empty, no group yet
        view.reset(unit.session)
    assert view_checksum() != replayed
    runtime.start()
    try:
        eventually(
            lambda: view_checksum() == replayed, timeout=60, message="a fresh consumer's view"
        )
    finally:
        runtime.stop()
    assert availability() == {p: (p in odd, VERSIONS) for p in products}


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
