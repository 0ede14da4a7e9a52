"""Inventory's rules. Every handler takes a `Unit`, changes rows through its session and
emits through its outbox; the caller commits.

Every change of stock takes one path, set-based with SQLAlchemy Core: lock the rows
involved with one `SELECT ... FOR UPDATE` (`_lock_stock`), change them as plain values
(`StockLevel`), write them back with one UPDATE per product and emit each product's new
availability once (`_write_stock`). Reserving a run of orders, releasing one, and setting
a product's stock all go through it.

Within a handler, locks are taken in one order: the order's row first (by inserting it, or
with SELECT ... FOR UPDATE), then stock rows in product id order, so two inventory
processes on one PostgreSQL database never both sell the last item. (The consumer applies
a run of events in one transaction; should two runs deadlock, PostgreSQL aborts one and
the consumer re-applies it event by event. SQLite takes its write lock at BEGIN.)"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.orm import Session

from services.inventory.events import (
    OrderCancelled,
    OrderCreated,
    OrderLine,
    ProductCreated,
    Shortage,
    StockChanged,
    StockLine,
    StockReleased,
    StockReserved,
    StockShortage,
)
from services.inventory.models import Order, OrderStatus, Reservation, Stock
from shared.clock import utcnow
from shared.errors import NotFound
from shared.messaging.envelope import Envelope
from shared.messaging.unit_of_work import Unit
from shared.storage.db import insert

log = logging.getLogger(__name__)


class StockNotFound(NotFound):
    def __init__(self, product_id: str) -> None:
        super().__init__(f"no stock for product {product_id}: inventory has not learned of it")
        self.product_id = product_id


def register_product(unit: Unit, products: Sequence[ProductCreated]) -> None:
    """Open an empty stock row for each new product, in one statement for a consumer's
    whole run; a repeat changes nothing."""
    session = unit.session
    rows = [
        {"product_id": product.product_id, "available": 0, "reserved": 0, "version": 0}
        for product in products
    ]
    session.execute(insert(session, Stock.__table__).on_conflict_do_nothing(), rows)


def reserve_stock(
    unit: Unit, orders: Sequence[OrderCreated], causes: Sequence[Envelope] = ()
) -> None:
    """Hold every line of each new order, or hold nothing of it and report what is short;
    orders are served in the order given, each from what the ones before it left.

    An order already seen (reserved, short, or cancelled first) reserves nothing more.
    Set-based, for a consumer's whole run of `order-created`: one insert claims every
    order, one select locks the stock rows involved, one update per product writes the
    result, and each product's new availability is emitted once. `causes` names the
    event behind each order, for the events it emits."""
    session = unit.session
    cause = dict(zip((o.order_id for o in orders), causes, strict=False))
    claimed = _claim_orders(session, [o.order_id for o in orders], OrderStatus.RESERVED)
    fresh = []
    for order in orders:
        if order.order_id in claimed:
            claimed.discard(order.order_id)
            fresh.append(order)
        else:
            log.info("order %s was seen before: nothing to reserve", order.order_id)
    if not fresh:
        return
    wanted = {order.order_id: _sum_lines(order.items) for order in fresh}
    stock = _lock_stock(session, {p for lines in wanted.values() for p in lines})
    short: list[str] = []
    held: list[dict[str, object]] = []
    last_change: dict[str, Envelope | None] = {}
    for order in fresh:
        lines = wanted[order.order_id]
        by = cause.get(order.order_id)
        shortages = [
            Shortage(product_id=p, requested=q, available=stock[p].available if p in stock else 0)
            for p, q in lines.items()
            if p not in stock or stock[p].available < q
        ]
        if shortages:
            short.append(order.order_id)
            unit.outbox.emit(
                StockShortage(order_id=order.order_id, shortages=shortages),
                caused_by=by,
            )
            continue
        for product_id, quantity in lines.items():
            row = stock[product_id]
            row.available -= quantity
            row.reserved += quantity
            row.version += 1
            last_change[product_id] = by
            held.append(
                {"order_id": order.order_id, "product_id": product_id, "quantity": quantity}
            )
        unit.outbox.emit(
            StockReserved(order_id=order.order_id, items=_lines(lines)),
            caused_by=by,
        )
    if short:
        session.execute(
            update(Order.__table__)
            .where(Order.__table__.c.order_id.in_(short))
            .values(status=OrderStatus.SHORT)
        )
    if held:
        session.execute(insert(session, Reservation.__table__), held)
        _write_stock(unit, [stock[p] for p in sorted(last_change)], last_change)


def release_stock(unit: Unit, cancellation: OrderCancelled) -> None:
    """Make what a cancelled order holds available again. An order not seen yet leaves a
    tombstone; one that holds nothing changes nothing and emits nothing."""
    session = unit.session
    order_id = cancellation.order_id
    if _claim_order(session, order_id, OrderStatus.CANCELLED):
        log.info("order %s cancelled before it was created here: tombstone kept", order_id)
        return
    orders, reservations = Order.__table__.c, Reservation.__table__.c
    status = session.scalar(
        select(orders.status).where(orders.order_id == order_id).with_for_update()
    )
    if status is not OrderStatus.RESERVED:
        log.info("order %s holds no stock (%s): nothing to release", order_id, status)
        return
    held: dict[str, int] = dict(
        session.execute(
            select(reservations.product_id, reservations.quantity).where(
                reservations.order_id == order_id
            )
        ).all()
    )
    stock = _lock_stock(session, held)
    for product_id, quantity in held.items():
        row = stock[product_id]
        row.reserved -= quantity
        row.available += quantity
        row.version += 1
    _write_stock(unit, [stock[p] for p in sorted(held)], {})
    session.execute(delete(Reservation.__table__).where(reservations.order_id == order_id))
    session.execute(
        update(Order.__table__)
        .where(orders.order_id == order_id)
        .values(status=OrderStatus.RELEASED)
    )
    unit.outbox.emit(StockReleased(order_id=order_id, items=_lines(held)))


def set_stock(unit: Unit, product_id: str, available: int) -> StockLevel:
    """Set how many items are available (what is reserved stays reserved)."""
    row = _lock_stock(unit.session, [product_id]).get(product_id)
    if row is None:
        raise StockNotFound(product_id)
    row.available = available
    row.version += 1
    _write_stock(unit, [row], {})
    return row


def get_stock(unit: Unit, product_id: str) -> StockLevel:
    row = _stock(unit.session, [product_id]).get(product_id)
    if row is None:
        raise StockNotFound(product_id)
    return row


def _claim_order(session: Session, order_id: str, status: OrderStatus) -> bool:
    """Insert the order's row unless it exists; True when this call inserted it.

    Insert-first: the primary key decides which event of an order comes first, even
    between two processes, where a check-then-insert would race. RETURNING tells whether
    the row was inserted: `rowcount` of an INSERT is -1 on psycopg under SQLAlchemy 2.1."""
    inserted = session.scalar(
        insert(session, Order.__table__)
        .values(order_id=order_id, status=status)
        .on_conflict_do_nothing()
        .returning(Order.__table__.c.order_id)
    )
    return inserted is not None


def _claim_orders(session: Session, order_ids: list[str], status: OrderStatus) -> set[str]:
    """`_claim_order` for many orders in one statement: the ids this call inserted."""
    rows = [{"order_id": order_id, "status": status} for order_id in dict.fromkeys(order_ids)]
    orders = Order.__table__
    statement = insert(session, orders).on_conflict_do_nothing().returning(orders.c.order_id)
    return set(session.execute(statement, rows).scalars())


@dataclass(slots=True)
class StockLevel:
    """A product's stock as plain values: free to reserve, reserved by orders, and the
    version its `stock-changed` events carry."""

    product_id: str
    available: int
    reserved: int
    version: int


def _stock(session: Session, product_ids: Iterable[str]) -> dict[str, StockLevel]:
    """The stock rows of `product_ids` that exist, by product id."""
    return _read_stock(session, product_ids, lock=False)


def _lock_stock(session: Session, product_ids: Iterable[str]) -> dict[str, StockLevel]:
    """The stock rows of `product_ids` that exist, locked FOR UPDATE in product id order
    (the order every handler locks them in)."""
    return _read_stock(session, product_ids, lock=True)


def _read_stock(
    session: Session, product_ids: Iterable[str], *, lock: bool
) -> dict[str, StockLevel]:
    c = Stock.__table__.c
    query = (
        select(c.product_id, c.available, c.reserved, c.version)
        .where(c.product_id.in_(sorted(set(product_ids))))
        .order_by(c.product_id)
    )
    rows = session.execute(query.with_for_update() if lock else query)
    return {row.product_id: StockLevel(*row) for row in rows}


_SET_STOCK = (
    update(Stock.__table__)
    .where(Stock.__table__.c.product_id == bindparam("b_product_id"))
    .values(
        available=bindparam("b_available"),
        reserved=bindparam("b_reserved"),
        version=bindparam("b_version"),
        updated_at=bindparam("b_updated_at"),
    )
)


def _write_stock(unit: Unit, rows: list[StockLevel], causes: dict[str, Envelope | None]) -> None:
    """Write locked stock rows back in one statement, and emit each one's availability,
    caused by `causes[product_id]` (else by what is being handled)."""
    if not rows:
        return
    now = utcnow()
    unit.session.connection().execute(
        _SET_STOCK,
        [
            {
                "b_product_id": row.product_id,
                "b_available": row.available,
                "b_reserved": row.reserved,
                "b_version": row.version,
                "b_updated_at": now,
            }
            for row in rows
        ],
    )
    for row in rows:
        unit.outbox.emit(
            StockChanged(product_id=row.product_id, available=row.available, version=row.version),
            caused_by=causes.get(row.product_id),
        )


def _sum_lines(lines: Iterable[OrderLine]) -> dict[str, int]:
    """Quantity per product, duplicate lines summed, in product id order."""
    totals: Counter[str] = Counter()
    for line in lines:
        totals[line.product_id] += line.quantity
    return dict(sorted(totals.items()))


def _lines(quantities: dict[str, int]) -> list[StockLine]:
    return [
        StockLine(product_id=product_id, quantity=quantity)
        for product_id, quantity in sorted(quantities.items())
    ]
