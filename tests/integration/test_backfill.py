"""Backfill (docs/replay.md): the one-file loyalty service (tests/integration/loyalty), started
after 1,000 orders, catches up on them before it says it is ready, and ends with the same
points as one that ran from the start. A replay of its points, whose handler emits an
event, publishes nothing."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, delete, func, select
from sqlalchemy.orm import Session

from services.order.events import Line, OrderCreated
from shared.messaging import tracing
from shared.messaging.producer import EventProducer
from shared.messaging.replay import View, replay
from shared.messaging.unit_of_work import Unit
from tests.conftest import service_databases
from tests.helpers import eventually, unique
from tests.integration.loyalty import service as loyalty

pytestmark = pytest.mark.integration

ORDERS = 1000
USERS = 17

Points = loyalty.Points
Outbox = loyalty.SPEC.outbox_model


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def urls(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    with service_databases(request.param, tmp_path, ["early", "late"]) as found:
        yield found


def settings(url: str, kafka: str, prefix: str) -> Any:
    return loyalty.LoyaltySettings(
        database_url=url,
        kafka_bootstrap_servers=kafka,
        topic_prefix=prefix,
        consumer_group=unique("loyalty"),
    )


def points_by_user(url: str) -> dict[str, int]:
    engine = create_engine(url)
    try:
        with Session(engine) as session:
            query = select(Points.user_id, func.sum(Points.points)).group_by(Points.user_id)
            return {user: int(total) for user, total in session.execute(query)}
    finally:
        engine.dispose()


def count(url: str, model: Any) -> int:
    engine = create_engine(url)
    try:
        with Session(engine) as session:
            return int(session.scalar(select(func.count()).select_from(model)) or 0)
    finally:
        engine.dispose()


def place_orders(kafka: str, prefix: str) -> None:
    producer = EventProducer(kafka)
    try:
        records = []
        for n in range(ORDERS):
            lines = [Line(product_id=f"p{k}", quantity=1) for k in range(1 + n % 3)]
            order = OrderCreated(order_id=f"o{n}", user_id=f"u{n % USERS}", items=lines)
            event = tracing.new_event(
                order.event_type, order.event_key, order, source="/services/order"
            )
            records.append((prefix + order.topic, event))
        assert all(delivery.ok for delivery in producer.send(records))
    finally:
        producer.close()


def test_a_service_started_late_catches_up_before_it_is_ready(
    urls: dict[str, str], kafka_bootstrap: str
) -> None:
    prefix = unique("backfill") + "-"
    expected = {f"u{u}": 0 for u in range(USERS)}
    for n in range(ORDERS):
        expected[f"u{n % USERS}"] += 1 + n % 3

    with TestClient(loyalty.create_app(settings(urls["early"], kafka_bootstrap, prefix))):
        place_orders(kafka_bootstrap, prefix)
        eventually(
            lambda: count(urls["early"], Points) == ORDERS,
            message="the service that ran from the start applied every order",
        )

        late = loyalty.create_app(settings(urls["late"], kafka_bootstrap, prefix))
        with TestClient(late) as client:
            first = client.get("/ready")
            assert first.status_code == 503
            assert first.json()["checks"]["caught_up"] is False
            seen: list[tuple[int, int]] = []

            def ready() -> bool:
                answer = client.get("/ready")
                applied = count(urls["late"], Points)  # after the answer: never fewer
                seen.append((answer.status_code, applied))
                return answer.status_code == 200

            eventually(ready, timeout=60, message="the late service says it is ready")
            assert seen[-1] == (200, ORDERS), "ready only once every order was applied"
            assert late.state.runtime.catch_up.left == 0

    assert points_by_user(urls["late"]) == points_by_user(urls["early"]) == expected


def test_replaying_points_re_emits_nothing(urls: dict[str, str], kafka_bootstrap: str) -> None:
    """earn_points emits points-earned; rebuilding the points must not."""
    prefix = unique("backfill-replay") + "-"
    url = urls["early"]
    with TestClient(loyalty.create_app(settings(url, kafka_bootstrap, prefix))):
        place_orders(kafka_bootstrap, prefix)
        eventually(lambda: count(url, Points) == ORDERS, message="every order applied")
        eventually(
            lambda: count(url, Outbox) == ORDERS, message="each order's points-earned written"
        )
    healthy = points_by_user(url)
    engine = create_engine(url)
    try:
        with Session(engine) as session, session.begin():
            session.execute(delete(Points).where(Points.user_id.in_(["u1", "u2"])))
        view = View(
            name="points",
            tables=("points",),
            handlers=(loyalty.earn_points,),
            reset=lambda session: None if session.execute(delete(Points)) else None,
            rows=lambda session: [
                tuple(row)
                for row in session.execute(
                    select(Points.order_id, Points.user_id, Points.points).order_by(Points.order_id)
                )
            ],
        )
        progress = replay(
            [view], engine=engine, bootstrap=kafka_bootstrap, name="loyalty", topic_prefix=prefix
        )
    finally:
        engine.dispose()
    assert progress.dropped == ORDERS
    assert progress.applied == ORDERS
    assert count(url, Outbox) == ORDERS, "no outbox row added"
    assert points_by_user(url) == healthy

    # one event its handler refuses is left out; the other 999 are rebuilt
    def earn_unless_poison(unit: Unit, order: loyalty.OrderCreated) -> None:
        if order.order_id == "o7":
            raise ValueError("a value this handler refuses")
        loyalty.earn_points(unit, order)

    engine = create_engine(url)
    try:
        poisoned = dataclasses.replace(view, handlers=(earn_unless_poison,))
        progress = replay(
            [poisoned],
            engine=engine,
            bootstrap=kafka_bootstrap,
            name="loyalty",
            topic_prefix=prefix,
        )
    finally:
        engine.dispose()
    assert progress.applied == ORDERS - 1
    assert len(progress.failed) == 1 and "order-created" in progress.failed[0]
    assert count(url, Points) == ORDERS - 1
