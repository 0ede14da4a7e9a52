"""A fifth service built with the library alone (tests/integration/loyalty/service.py), run
against the real broker: it consumes the order service's `order-created` and publishes
`points-earned` on a topic of its own."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select

from services.order.events import Line, OrderConfirmed, OrderCreated
from shared.messaging import tracing
from shared.messaging.producer import EventProducer
from tests.helpers import eventually, metric_total, read_topic, unique
from tests.integration.loyalty import service as loyalty

pytestmark = pytest.mark.integration

MAX_LINES = 40


def test_the_service_fits_in_forty_lines() -> None:
    source = Path(loyalty.__file__).read_text().splitlines()
    assert len([line for line in source if line.strip()]) <= MAX_LINES


def test_a_new_service_consumes_order_created_and_publishes_its_own_event(
    database_url: str, kafka_bootstrap: str
) -> None:
    prefix = unique("loyalty") + "-"
    settings = loyalty.LoyaltySettings(
        database_url=database_url,
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_prefix=prefix,
        consumer_group=unique("loyalty"),
    )
    order_id = unique("order")
    lines = [Line(product_id="p-1", quantity=2), Line(product_id="p-2", quantity=1)]
    created = OrderCreated(order_id=order_id, user_id="u-1", items=lines)  # the publisher's model
    other = OrderConfirmed(order_id=order_id, user_id="u-1")  # not handled: skipped

    with TestClient(loyalty.create_app(settings)) as client:
        producer = EventProducer(kafka_bootstrap)
        for payload in (created, other):
            event = tracing.new_event(
                payload.event_type, payload.event_key, payload, source="/services/order"
            )
            producer.publish(prefix + payload.topic, event)
        producer.close()

        earned = read_topic(
            kafka_bootstrap, prefix + "loyalty", until=lambda messages: len(messages) >= 1
        )
        assert [dict(m.headers() or [])["ce_type"] for m in earned] == [b"points-earned"]
        assert earned[0].key() == b"u-1"
        assert orjson.loads(earned[0].value() or b"") == {
            "user_id": "u-1",
            "order_id": order_id,
            "points": 2,
        }
        eventually(
            lambda: metric_total(client.get("/metrics").text, "events_skipped_total") == 1.0,
            message="order-confirmed is skipped and counted",
        )
        document = client.get("/asyncapi.json").json()
        assert document["asyncapi"] == "3.0.0"
        assert {op["action"] for op in document["operations"].values()} == {"send", "receive"}

    engine = create_engine(database_url)
    with engine.connect() as connection:
        rows = connection.execute(select(loyalty.Points.__table__)).all()
    engine.dispose()
    assert [(r.order_id, r.user_id, r.points) for r in rows] == [(order_id, "u-1", 2)]
