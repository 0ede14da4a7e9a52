"""The order's chain: every event of an order, filed with its place on Kafka (consumed
ones by the consumers, the service's own as the outbox relay publishes them), and read
back in causal order."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.order.handlers import get_order
from services.order.models import OrderEvent
from shared.messaging.envelope import Envelope
from shared.messaging.producer import Delivery
from shared.messaging.unit_of_work import Unit
from shared.storage.db import insert


def record_event(unit: Unit, event: Envelope, order_id: str) -> None:
    """File an event of the order's saga, with where it sits on Kafka."""
    file_events(unit.session, [(event, order_id)])


def file_published(session: Session, deliveries: list[Delivery]) -> None:
    """The outbox relay's hook: file this service's own events (all keyed by order id) with
    the place the broker acknowledged, without consuming them back."""
    file_events(
        session,
        [(d.event.at(d.topic, d.partition or 0, d.offset or 0), d.event.key) for d in deliveries],
    )


def file_events(session: Session, events: list[tuple[Envelope, str]]) -> None:
    """File events in one statement; one already filed is left as it is."""
    if not events:
        return
    session.execute(
        insert(session, OrderEvent.__table__).on_conflict_do_nothing(),
        [
            {
                "event_id": event.id,
                "order_id": order_id,
                "type": event.type,
                "source": event.source,
                "time": event.time,
                "correlation_id": event.correlation_id,
                "causation_id": event.causation_id,
                "traceparent": event.traceparent,
                "topic": event.topic,
                "partition": event.partition,
                "offset": event.offset,
            }
            for event, order_id in events
        ],
    )


def order_events(unit: Unit, order_id: str, owner: str | None = None) -> list[OrderEvent]:
    """The order's events in causal order: each after the event that caused it."""
    get_order(unit, order_id, owner)
    events = list(
        unit.session.scalars(
            select(OrderEvent)
            .where(OrderEvent.order_id == order_id)
            .order_by(OrderEvent.time, OrderEvent.topic, OrderEvent.partition, OrderEvent.offset)
        )
    )
    ids = {e.event_id for e in events}
    children: dict[str | None, list[OrderEvent]] = {}
    for e in events:
        children.setdefault(e.causation_id if e.causation_id in ids else None, []).append(e)
    ordered: list[OrderEvent] = []
    stack = list(reversed(children.get(None, [])))
    while stack:
        event = stack.pop()
        ordered.append(event)
        stack.extend(reversed(children.get(event.event_id, [])))
    return ordered
