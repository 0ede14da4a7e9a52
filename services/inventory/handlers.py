"""Inventory's rules. Every handler takes a `Unit`, changes rows through its session and
emits through its outbox; the caller commits.

Within a handler, locks are taken in one order: the order's row first (by inserting it, or
with SELECT ... FOR UPDATE), then stock rows in product id order, so two inventory
processes on one PostgreSQL database never both sell the last item. (The consumer applies
a run of events in one transaction; should two runs deadlock, PostgreSQL aborts one and
the consumer re-applies it event by event. SQLite takes its write lock at BEGIN.)"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from services.inventory.events import (
    STOCK,
    STOCK_CHANGED,
    STOCK_CHANGES,
    STOCK_RELEASED,
    STOCK_RESERVED,
    STOCK_SHORTAGE,
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
from services.inventory.schemas import StockIn
from shared.db import insert
from shared.http import NotFound
from shared.unit_of_work import Unit

log = logging.getLogger(__name__)


class StockNotFound(NotFound):
    def __init__(self, product_id: str) -> None:
        super().__init__(f"no stock for product {product_id}: inventory has not learned of it")
        self.product_id = product_id


def register_product(unit: Unit, product: ProductCreated) -> None:
    """Open an empty stock row for a new product; a repeat changes nothing."""
    session = unit.session
    session.execute(
        insert(session, Stock)
        .values(product_id=product.product_id, available=0, reserved=0, version=0)
        .on_conflict_do_nothing()
    )


def reserve_stock(unit: Unit, order: OrderCreated) -> None:
    """Hold every line of a new order, or hold nothing and report what is short.

    An order already seen (reserved, short, or cancelled first) reserves nothing more."""
    session = unit.session
    if not _claim_order(session, order.order_id, OrderStatus.RESERVED):
        log.info("order %s was seen before: nothing to reserve", order.order_id)
        return
    wanted = _sum_lines(order.items)
    stocks = _lock_stock(session, wanted)
    available = {product_id: stock.available for product_id, stock in stocks.items()}
    shortages = [
        Shortage(product_id=product_id, requested=quantity, available=available.get(product_id, 0))
        for product_id, quantity in wanted.items()
        if available.get(product_id, 0) < quantity
    ]
    if shortages:
        session.execute(
            update(Order).where(Order.order_id == order.order_id).values(status=OrderStatus.SHORT)
        )
        unit.outbox.emit(
            STOCK,
            STOCK_SHORTAGE,
            order.order_id,
            StockShortage(order_id=order.order_id, shortages=shortages),
        )
        return
    for product_id, quantity in wanted.items():
        stock = stocks[product_id]
        stock.available -= quantity
        stock.reserved += quantity
        session.add(Reservation(order_id=order.order_id, product_id=product_id, quantity=quantity))
        _record_change(unit, stock)
    unit.outbox.emit(
        STOCK,
        STOCK_RESERVED,
        order.order_id,
        StockReserved(order_id=order.order_id, items=_lines(wanted)),
    )


def release_stock(unit: Unit, cancellation: OrderCancelled) -> None:
    """Make what a cancelled order holds available again. An order not seen yet leaves a
    tombstone; one that holds nothing changes nothing and emits nothing."""
    session = unit.session
    order_id = cancellation.order_id
    if _claim_order(session, order_id, OrderStatus.CANCELLED):
        log.info("order %s cancelled before it was created here: tombstone kept", order_id)
        return
    order = session.scalars(
        select(Order)
        .where(Order.order_id == order_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()
    if order.status is not OrderStatus.RESERVED:
        log.info("order %s holds no stock (%s): nothing to release", order_id, order.status)
        return
    reservations = session.scalars(
        select(Reservation).where(Reservation.order_id == order_id)
    ).all()
    held = {r.product_id: r.quantity for r in reservations}
    stocks = _lock_stock(session, held)
    for product_id, quantity in sorted(held.items()):
        stock = stocks[product_id]
        stock.reserved -= quantity
        stock.available += quantity
        _record_change(unit, stock)
    for reservation in reservations:
        session.delete(reservation)
    order.status = OrderStatus.RELEASED
    unit.outbox.emit(
        STOCK,
        STOCK_RELEASED,
        order_id,
        StockReleased(order_id=order_id, items=_lines(held)),
    )


def set_stock(unit: Unit, product_id: str, command: StockIn) -> Stock:
    """Set how many items are available (what is reserved stays reserved)."""
    stock = _lock_stock(unit.session, [product_id]).get(product_id)
    if stock is None:
        raise StockNotFound(product_id)
    stock.available = command.available
    _record_change(unit, stock)
    return stock


def get_stock(unit: Unit, product_id: str) -> Stock:
    stock = unit.session.get(Stock, product_id)
    if stock is None:
        raise StockNotFound(product_id)
    return stock


def _claim_order(session: Session, order_id: str, status: OrderStatus) -> bool:
    """Insert the order's row unless it exists; True when this call inserted it.

    Insert-first: the primary key decides which event of an order comes first, even
    between two processes, where a check-then-insert would race. RETURNING tells whether
    the row was inserted: `rowcount` of an INSERT is -1 on psycopg under SQLAlchemy 2.1."""
    inserted = session.scalar(
        insert(session, Order)
        .values(order_id=order_id, status=status)
        .on_conflict_do_nothing()
        .returning(Order.order_id)
    )
    return inserted is not None


def _lock_stock(session: Session, product_ids: Iterable[str]) -> dict[str, Stock]:
    """The stock rows of `product_ids` that exist, locked FOR UPDATE in product id order."""
    rows = session.scalars(
        select(Stock)
        .where(Stock.product_id.in_(sorted(set(product_ids))))
        .order_by(Stock.product_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return {stock.product_id: stock for stock in rows}


def _record_change(unit: Unit, stock: Stock) -> None:
    """Bump the row's version and emit its new availability."""
    stock.version += 1
    unit.outbox.emit(
        STOCK_CHANGES,
        STOCK_CHANGED,
        stock.product_id,
        StockChanged(product_id=stock.product_id, available=stock.available, version=stock.version),
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
