"""Replay (docs/replay.md): every derived view of the four services, corrupted, is rebuilt
from the log while orders keep flowing, and ends equal to the view a fresh consumer builds
from scratch; a replay publishes nothing and moves no group's offsets.

The services' own consumers (ConsumerWorker with each service's router, on its own
database) keep the live views; the events are published as their publishers write them."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import TopicPartition
from sqlalchemy import Engine, delete, func, insert, select, update
from sqlalchemy.orm import Session

from services.inventory import views as inventory_views
from services.inventory.events import StockChanged, StockLine, StockReleased
from services.inventory.main import SPEC as INVENTORY
from services.inventory.models import Stock
from services.order import chain
from services.order import views as order_views
from services.order.events import (
    Line,
    OrderCancelled,
    OrderConfirmed,
    OrderCreated,
    OrderRejected,
    Shortage,
)
from services.order.main import SPEC as ORDER
from services.order.models import KnownProduct, KnownUser, OrderEvent
from services.product import views as product_views
from services.product.events import ProductCreated
from services.product.main import SPEC as PRODUCT
from services.product.models import Product
from services.user import views as user_views
from services.user.events import UserRegistered
from services.user.main import SPEC as USER
from services.user.models import Notification
from shared.messaging import tracing
from shared.messaging.consumer import ConsumerWorker
from shared.messaging.deadletter import DEAD_LETTERS
from shared.messaging.events import Event
from shared.messaging.fetch import consumer_config
from shared.messaging.producer import EventProducer
from shared.messaging.replay import View, replay
from shared.messaging.topics import ensure_topics
from shared.messaging.unit_of_work import UnitOfWork
from shared.runtime.service import ServiceSpec
from shared.storage.db import make_engine, make_sessions
from shared.storage.migrations import upgrade
from tests.conftest import service_databases
from tests.helpers import eventually, unique

pytestmark = pytest.mark.integration

SERVICES: dict[str, tuple[ServiceSpec, tuple[View, ...]]] = {
    "order": (ORDER, order_views.VIEWS),
    "inventory": (INVENTORY, inventory_views.VIEWS),
    "product": (PRODUCT, product_views.VIEWS),
    "user": (USER, user_views.VIEWS),
}
TOPICS = ("users", "products", "stock-changes", "orders", "stock", DEAD_LETTERS)
USERS, PRODUCTS = 12, 8
BEFORE, DURING = 150, 60
"""Orders placed before the views are corrupted, and at most while replays run."""


@dataclass
class Shop:
    """Publishes what the order, user, product and inventory services would."""

    producer: EventProducer
    prefix: str
    order_db: Engine | None = None
    """The order service's database: its own events are filed in their orders' chains as
    its outbox relay files them, once the broker has them."""
    placed: int = 0
    released: int = 0
    stock: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Each product's last (available, version)."""

    def publish(self, *payloads: Event) -> None:
        deliveries = self.producer.send(
            [
                (
                    self.prefix + p.topic,
                    tracing.new_event(p.event_type, p.event_key, p, source="/services/test"),
                )
                for p in payloads
            ]
        )
        assert all(delivery.ok for delivery in deliveries)
        own = [d for d in deliveries if d.topic == self.prefix + "orders"]
        if own and self.order_db is not None:
            with Session(self.order_db) as session, session.begin():
                chain.file_published(session, own)

    def open(self) -> None:
        self.publish(
            *(
                UserRegistered(user_id=f"u{i}", name=f"U{i}", email=f"u{i}@x.io")
                for i in range(USERS)
            )
        )
        self.publish(
            *(
                ProductCreated(product_id=f"p{j}", name=f"P{j}", price_cents=100 + j)
                for j in range(PRODUCTS)
            )
        )

    def place_order(self) -> None:
        """One order and what it causes: a stock change, then its outcome."""
        n = self.placed
        self.placed += 1
        order_id, user_id, product_id = f"o{n}", f"u{n % USERS}", f"p{n % PRODUCTS}"
        available, version = self.stock.get(product_id, (3, 0))
        outcome: Event
        if n % 5 == 4:
            outcome = OrderRejected(
                order_id=order_id,
                user_id=user_id,
                reason="short",
                shortages=[Shortage(product_id=product_id, requested=1, available=0)],
            )
        elif n % 7 == 6:
            outcome = OrderCancelled(order_id=order_id, user_id=user_id)
            self.released += 1
        else:
            outcome = OrderConfirmed(order_id=order_id, user_id=user_id)
        available = (available - 1) % 3  # in stock, then not, then in stock again
        self.stock[product_id] = (available, version + 1)
        self.publish(
            OrderCreated(
                order_id=order_id, user_id=user_id, items=[Line(product_id=product_id, quantity=1)]
            ),
            StockChanged(product_id=product_id, available=available, version=version + 1),
            outcome,
        )
        if isinstance(outcome, OrderCancelled):
            self.publish(
                StockReleased(
                    order_id=order_id, items=[StockLine(product_id=product_id, quantity=1)]
                )
            )


@dataclass
class Running:
    engines: dict[str, Engine]
    workers: list[ConsumerWorker]
    groups: dict[str, str]


@contextmanager
def services(urls: dict[str, str], kafka: str, prefix: str, suffix: str) -> Iterator[Running]:
    """The four services' consumers, each on its own database (product's catalogue, its
    source of truth, seeded as the product service holds it)."""
    engines: dict[str, Engine] = {}
    workers: list[ConsumerWorker] = []
    groups: dict[str, str] = {}
    try:
        for name, (spec, _) in SERVICES.items():
            engine = engines[name] = make_engine(urls[name + suffix])
            upgrade(engine, spec.migrations)
            groups[name] = unique(f"{name}{suffix}")
            workers.append(
                ConsumerWorker(
                    name=name,
                    group_id=groups[name],
                    bootstrap=kafka,
                    topics=[prefix + t for t in spec.subscribes],
                    owned_topics=[prefix + t for t in spec.owns],
                    topic_prefix=prefix,
                    router=spec.router,
                    uow=UnitOfWork(make_sessions(engine), spec.outbox_model, name, prefix),
                    processed_model=spec.processed_model,
                    producer=EventProducer(kafka),
                    dead_letter_topic=prefix + DEAD_LETTERS,
                )
            )
        with Session(engines["product"]) as session, session.begin():
            session.execute(
                insert(Product),
                [{"id": f"p{j}", "name": f"P{j}", "price_cents": 100 + j} for j in range(PRODUCTS)],
            )
        for worker in workers:
            worker.start()
        yield Running(engines, workers, groups)
    finally:
        for worker in workers:
            worker.stop()
        for engine in engines.values():
            engine.dispose()


def checksums(engines: dict[str, Engine]) -> dict[str, str]:
    sums = {}
    for name, (_, views) in SERVICES.items():
        with Session(engines[name]) as session:
            for view in views:
                sums[f"{name}/{view.name}"] = view.checksum(session)
    return sums


def counts(engines: dict[str, Engine]) -> dict[str, int]:
    """How many rows each view holds: what a complete view must have."""
    return {key: int(value.split(":")[0]) for key, value in checksums(engines).items()}


def complete(shop: Shop, notifications: int) -> dict[str, int]:
    return {
        "order/chain": 2 * notifications + shop.released,
        "order/known-users": USERS,
        "order/known-products": PRODUCTS,
        "inventory/known-products": PRODUCTS,
        "product/availability": PRODUCTS,
        "user/notifications": notifications,
    }


def corrupt(engines: dict[str, Engine]) -> None:
    """Rows lost, rows changed beyond what a version check would repair, rows invented."""
    with Session(engines["order"]) as session, session.begin():
        session.execute(delete(KnownUser).where(KnownUser.id.in_(["u1", "u2", "u3"])))
        session.execute(update(KnownProduct).values(name="corrupt", version=999))
        session.execute(delete(OrderEvent).where(OrderEvent.order_id.in_(["o1", "o2"])))
        session.execute(update(OrderEvent).values(offset=OrderEvent.offset + 1))
    with Session(engines["inventory"]) as session, session.begin():
        session.execute(delete(Stock).where(Stock.product_id.in_(["p0", "p1"])))
        session.execute(
            insert(Stock).values(product_id="ghost", available=0, reserved=0, version=0)
        )
    with Session(engines["product"]) as session, session.begin():
        session.execute(update(Product).values(in_stock=~Product.in_stock, stock_version=10**6))
    with Session(engines["user"]) as session, session.begin():
        session.execute(delete(Notification).where(Notification.order_id.in_(["o0", "o4", "o6"])))
        session.execute(
            insert(Notification).values(user_id="u0", order_id="o0", type="x", message="forged")
        )


def committed(kafka: str, group: str, topics: list[str]) -> dict[tuple[str, int], int]:
    from confluent_kafka import Consumer

    consumer = Consumer(consumer_config(kafka, group))
    try:
        asked = [TopicPartition(t, p) for t in topics for p in range(3)]
        return {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(asked, timeout=10)}
    finally:
        consumer.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def urls(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    names = [*SERVICES, *(f"{name}-fresh" for name in SERVICES)]
    with service_databases(request.param, tmp_path, names) as found:
        yield found


def test_replay_rebuilds_every_corrupted_view_while_orders_flow(
    urls: dict[str, str], kafka_bootstrap: str
) -> None:
    prefix = unique("replay") + "-"
    ensure_topics(kafka_bootstrap, [prefix + t for t in TOPICS], partitions=3)
    producer = EventProducer(kafka_bootstrap)
    shop = Shop(producer, prefix)
    outcomes = BEFORE
    with ExitStack() as stack:
        live = stack.enter_context(services(urls, kafka_bootstrap, prefix, ""))
        shop.order_db = live.engines["order"]
        shop.open()
        for _ in range(BEFORE):
            shop.place_order()
        eventually(
            lambda: counts(live.engines) == complete(shop, outcomes),
            message="the live views are complete",
        )
        healthy = checksums(live.engines)
        corrupt(live.engines)
        assert all(checksums(live.engines)[key] != healthy[key] for key in healthy), (
            "every view is corrupted"
        )
        outboxes = {
            n: _count(live.engines[n], SERVICES[n][0]) for n in ("order", "product", "user")
        }

        flowing = threading.Event()
        placed_during = [0]

        def keep_ordering() -> None:
            while not flowing.is_set() and placed_during[0] < DURING:
                shop.place_order()
                placed_during[0] += 1

        orders = threading.Thread(target=keep_ordering)
        orders.start()
        try:
            for name, (spec, views) in SERVICES.items():
                before = committed(
                    kafka_bootstrap, live.groups[name], [prefix + t for t in spec.subscribes]
                )
                progress = replay(
                    views,
                    engine=live.engines[name],
                    bootstrap=kafka_bootstrap,
                    name=name,
                    topic_prefix=prefix,
                )
                assert progress.read > 0 and progress.lag == 0 and progress.applied > 0
                assert progress.dropped == 0
                after = committed(
                    kafka_bootstrap, live.groups[name], [prefix + t for t in spec.subscribes]
                )
                assert all(after[place] >= offset for place, offset in before.items()), (
                    "the service's group never moves back"
                )
        finally:
            flowing.set()
            orders.join()
        outcomes = BEFORE + placed_during[0]

        fresh = stack.enter_context(services(urls, kafka_bootstrap, prefix, "-fresh"))
        eventually(
            lambda: (
                {k: v for k, v in counts(fresh.engines).items() if k != "order/chain"}
                == {k: v for k, v in complete(shop, outcomes).items() if k != "order/chain"}
            ),
            message="a fresh consumer's views are complete",
        )
        # the order service never consumes its own events: from scratch, its relay's half
        # of the chain comes from the topic, as a replay reads it
        (chain_view,) = [v for v in order_views.VIEWS if v.name == "chain"]
        replay(
            [chain_view],
            engine=fresh.engines["order"],
            bootstrap=kafka_bootstrap,
            name="order",
            topic_prefix=prefix,
        )
        eventually(
            lambda: counts(fresh.engines) == complete(shop, outcomes),
            message="the fresh views are complete",
        )

        def equal() -> bool:
            assert checksums(live.engines) == checksums(fresh.engines)
            return True

        eventually(equal, message="every rebuilt view equals the fresh consumer's")
        assert "ghost" not in _stock_ids(live.engines["inventory"])
        # a rebuild wrote nothing to be published
        for name, count in outboxes.items():
            assert _count(live.engines[name], SERVICES[name][0]) == count


def _count(engine: Engine, spec: ServiceSpec) -> int:
    with Session(engine) as session:
        return int(session.scalar(select(func.count()).select_from(spec.outbox_model)) or 0)


def _stock_ids(engine: Engine) -> set[Any]:
    with Session(engine) as session:
        return set(session.scalars(select(Stock.product_id)))


def test_a_replay_to_a_time_leaves_out_what_came_after(
    urls: dict[str, str], kafka_bootstrap: str
) -> None:
    """--to-datetime: the view as it was then."""
    import time as clock

    from shared.clock import utcnow

    prefix = unique("replay-time") + "-"
    ensure_topics(kafka_bootstrap, [prefix + t for t in TOPICS], partitions=3)
    shop = Shop(EventProducer(kafka_bootstrap), prefix)
    shop.open()
    clock.sleep(0.05)  # record timestamps are in milliseconds: a clear line between the two
    moment = utcnow()
    clock.sleep(0.05)
    shop.publish(UserRegistered(user_id="late", name="Late", email="late@x.io"))
    engine = make_engine(urls["order"])
    try:
        upgrade(engine, ORDER.migrations)
        views = order_views.VIEWS
        replay(
            views,
            engine=engine,
            bootstrap=kafka_bootstrap,
            name="order",
            topic_prefix=prefix,
            until=moment,
        )
        with Session(engine) as session:
            assert {row[0] for row in views[0].rows(session)} == {f"u{i}" for i in range(USERS)}
        replay(views, engine=engine, bootstrap=kafka_bootstrap, name="order", topic_prefix=prefix)
        with Session(engine) as session:
            assert "late" in {row[0] for row in views[0].rows(session)}
            assert len(views[1].rows(session)) == PRODUCTS
    finally:
        engine.dispose()
