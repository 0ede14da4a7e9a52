"""The order saga's rules. Every function takes a Unit and never commits."""

from __future__ import annotations

import contextvars
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from services.order.events import (
    Line,
    OrderCancelled,
    OrderConfirmed,
    OrderCreated,
    OrderRejected,
    ProductCreated,
    StockReserved,
    StockShortage,
    UserRegistered,
)
from services.order.models import (
    IdempotencyKey,
    KnownProduct,
    KnownUser,
    Order,
    OrderLine,
    OrderStatus,
)
from shared.clock import utcnow
from shared.errors import Conflict, DomainError, Invalid, NotAuthenticated, NotFound
from shared.messaging import tracing
from shared.messaging.envelope import Envelope, new_id
from shared.messaging.unit_of_work import Unit
from shared.runtime.groupcommit import Item
from shared.storage.db import insert


class OrderNotFound(NotFound):
    def __init__(self, order_id: str) -> None:
        super().__init__(f"order {order_id} not found")
        self.order_id = order_id


class UnknownUser(NotAuthenticated):
    """The token's subject is no user this service has learnt of (yet)."""

    def __init__(self, user_id: str) -> None:
        super().__init__(f"unknown user {user_id}", credential_problem="unknown user")
        self.user_id = user_id


class UnknownProducts(Invalid):
    def __init__(self, product_ids: list[str]) -> None:
        super().__init__(f"unknown product(s): {', '.join(product_ids)}")
        self.product_ids = product_ids


class IdempotencyKeyReused(Conflict):
    def __init__(self, key: str) -> None:
        super().__init__(f"Idempotency-Key {key!r} was already used with a different request")
        self.key = key


class OrderNotCancellable(Conflict):
    def __init__(self, order_id: str, status: OrderStatus) -> None:
        super().__init__(f"order {order_id} is {status} and cannot be cancelled")
        self.order_id = order_id


@dataclass(frozen=True, slots=True)
class PlacedOrder:
    """An order as it was placed: what placing it answers, and answers again to a replay
    of the same request."""

    id: str
    user_id: str
    lines: tuple[Line, ...]
    status: OrderStatus
    reason: str | None
    created_at: datetime

    def snapshot(self) -> dict[str, Any]:
        """As its idempotency key keeps it (JSON)."""
        return {
            "id": self.id,
            "user_id": self.user_id,
            "items": _items(self.lines),
            "status": self.status.value,
            "reason": self.reason,
            "created_at": self.created_at.isoformat(),
        }

    @classmethod
    def from_snapshot(cls, kept: dict[str, Any]) -> PlacedOrder:
        return cls(
            id=kept["id"],
            user_id=kept["user_id"],
            lines=tuple(Line.model_validate(item) for item in kept["items"]),
            status=OrderStatus(kept["status"]),
            reason=kept["reason"],
            created_at=datetime.fromisoformat(kept["created_at"]),
        )


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """What POST /orders asks: `user_id`'s order of `lines`, with its Idempotency-Key."""

    user_id: str
    lines: tuple[Line, ...]
    idempotency_key: str | None = None


def place_order(
    unit: Unit, lines: Sequence[Line], user_id: str, idempotency_key: str | None = None
) -> PlacedOrder:
    """Record a PENDING order of `user_id` for `lines` and emit `order-created` (one
    request of `place_orders`; its refusal raised)."""
    request = OrderRequest(user_id, tuple(lines), idempotency_key)
    (answer,) = place_orders(unit, [Item(request, contextvars.copy_context())])
    if isinstance(answer, DomainError):
        raise answer
    return answer


def place_orders(
    unit: Unit, requests: Sequence[Item[OrderRequest]]
) -> list[PlacedOrder | DomainError]:
    """Place a group commit's orders, set-based: one SELECT each for their users and
    products, one INSERT each for all their orders and lines (and, on commit, events).
    Each request gets its PENDING order, or the refusal that left nothing of it written:
    an unknown user or product, a key used for another request. Each order's
    `order-created` is emitted in its own request's context (trace, cause).

    With an idempotency key, the user's key is claimed (insert-first) before the order is
    written, keeping the order as placed: a replay of the same request gets that first
    order back and creates nothing; the same key with another request conflicts. Each
    user has a key space of their own, so another user's key is no concern of theirs."""
    session = unit.session
    wanted_users = {r.value.user_id for r in requests}
    wanted_products = {line.product_id for r in requests for line in r.value.lines}
    users = set(session.scalars(select(KnownUser.id).where(KnownUser.id.in_(wanted_users))))
    products = set(
        session.scalars(select(KnownProduct.id).where(KnownProduct.id.in_(wanted_products)))
    )
    answers: list[PlacedOrder | DomainError] = []
    orders: list[dict[str, Any]] = []
    lines: list[dict[str, Any]] = []
    for item in requests:
        request = item.value
        placed = PlacedOrder(
            id=new_id(),
            user_id=request.user_id,
            lines=request.lines,
            status=OrderStatus.PENDING,
            reason=None,
            created_at=utcnow(),
        )
        try:
            first = _claim(session, request, placed, _refusal(request, users, products))
        except DomainError as refused:
            answers.append(refused)
            continue
        if first is not None:
            answers.append(first)
            continue
        created = item.within(
            unit.outbox.emit,
            OrderCreated(order_id=placed.id, user_id=placed.user_id, items=list(placed.lines)),
            correlation_id=placed.id,
        )
        orders.append(_order_row(placed, created.traceparent))
        lines.extend(_line_rows(placed))
        answers.append(placed)
    if orders:
        session.execute(insert(session, Order.__table__), orders)
        session.execute(insert(session, OrderLine.__table__), lines)
    return answers


def _refusal(request: OrderRequest, users: set[str], products: set[str]) -> DomainError | None:
    if request.user_id not in users:
        return UnknownUser(request.user_id)
    if missing := sorted({line.product_id for line in request.lines} - products):
        return UnknownProducts(missing)
    return None


def _claim(
    session: Session, request: OrderRequest, placed: PlacedOrder, refusal: DomainError | None
) -> PlacedOrder | None:
    """None when `placed` may be written: no key, or its key claimed now. The first order
    when the key was claimed before by the same request; raises the refusal, or a
    conflict when the key was claimed by another request. A refused request claims
    nothing, so its key stays free for a retry."""
    key = request.idempotency_key
    if key is None:
        if refusal is not None:
            raise refusal
        return None
    request_hash = hashlib.sha256(
        orjson.dumps([placed.user_id, {"items": _items(placed.lines)}], option=orjson.OPT_SORT_KEYS)
    ).hexdigest()
    if refusal is None:
        claimed = session.execute(
            insert(session, _KEYS)
            .values(
                user_id=placed.user_id,
                key=key,
                request_hash=request_hash,
                order_id=placed.id,
                response=placed.snapshot(),
            )
            .on_conflict_do_nothing()
            .returning(_KEYS.c.key)
        ).first()
        if claimed is not None:
            return None
    first = session.execute(
        select(_KEYS.c.request_hash, _KEYS.c.response).where(
            _KEYS.c.user_id == placed.user_id, _KEYS.c.key == key
        )
    ).first()
    if first is None and refusal is not None:
        raise refusal
    if first is None or first.request_hash != request_hash or first.response is None:
        raise IdempotencyKeyReused(key)
    return PlacedOrder.from_snapshot(first.response)


def _order_row(placed: PlacedOrder, traceparent: str) -> dict[str, Any]:
    return {
        "id": placed.id,
        "user_id": placed.user_id,
        "status": placed.status,
        "traceparent": traceparent,
        "created_at": placed.created_at,
        "updated_at": placed.created_at,
    }


def _line_rows(placed: PlacedOrder) -> list[dict[str, Any]]:
    return [
        {"order_id": placed.id, "line_no": n, "product_id": i.product_id, "quantity": i.quantity}
        for n, i in enumerate(placed.lines)
    ]


_KEYS = IdempotencyKey.__table__


def _items(lines: Iterable[Line]) -> list[dict[str, Any]]:
    return [{"product_id": line.product_id, "quantity": line.quantity} for line in lines]


def get_order(
    unit: Unit, order_id: str, owner: str | None = None, *, for_update: bool = False
) -> Order:
    """The order; with `owner`, only if it is theirs (another user's is not found)."""
    query = select(Order).where(Order.id == order_id)
    order = unit.session.scalars(query.with_for_update() if for_update else query).one_or_none()
    if order is None or (owner is not None and order.user_id != owner):
        raise OrderNotFound(order_id)
    return order


def list_orders(unit: Unit, user_id: str | None, limit: int) -> list[Order]:
    query = select(Order).order_by(Order.created_at.desc(), Order.id).limit(limit)
    if user_id is not None:
        query = query.where(Order.user_id == user_id)
    return list(unit.session.scalars(query))


def cancel_order(unit: Unit, order_id: str, owner: str | None = None) -> Order:
    """PENDING or CONFIRMED → CANCELLED, emitting `order-cancelled` (inventory releases
    whatever it holds for the order). Cancelling a cancelled order changes nothing."""
    order = get_order(unit, order_id, owner, for_update=True)
    if order.status is OrderStatus.CANCELLED:
        return order
    if order.status is OrderStatus.REJECTED:
        raise OrderNotCancellable(order_id, order.status)
    order.status = OrderStatus.CANCELLED
    with tracing.join_trace(order.traceparent):
        unit.outbox.emit(
            OrderCancelled(order_id=order.id, user_id=order.user_id),
            correlation_id=order.id,
        )
    return order


def confirm_order(
    unit: Unit, answers: Sequence[StockReserved], causes: Sequence[Envelope] = ()
) -> None:
    """Stock is held: a PENDING order is confirmed. A cancelled one stays cancelled (its
    `order-cancelled` follows `order-created` on one partition, so inventory releases).

    Set-based for a consumer's run of `stock-reserved`: one conditional update moves
    every pending order; `causes` names the event behind each answer."""
    table = Order.__table__
    ids = [answer.order_id for answer in answers]
    moved = dict(
        unit.session.execute(
            update(table)
            .where(table.c.id.in_(ids), table.c.status == OrderStatus.PENDING)
            .values(status=OrderStatus.CONFIRMED, updated_at=utcnow())
            .returning(table.c.id, table.c.user_id)
        ).all()
    )
    if unmoved := set(ids) - set(moved):
        found = set(unit.session.scalars(select(table.c.id).where(table.c.id.in_(unmoved))))
        if missing := sorted(unmoved - found):
            raise OrderNotFound(missing[0])
    cause = dict(zip(ids, causes, strict=False))
    for order_id in ids:
        if (user_id := moved.pop(order_id, None)) is not None:
            unit.outbox.emit(
                OrderConfirmed(order_id=order_id, user_id=user_id),
                caused_by=cause.get(order_id),
            )


def reject_order(unit: Unit, shortage: StockShortage) -> None:
    reason = _fit(
        "insufficient stock: "
        + ", ".join(
            f"{s.product_id} (requested {s.requested}, available {s.available})"
            for s in shortage.shortages
        ),
        Order.__table__.c.reason.type.length or 2000,
    )
    user_id = _settle(unit, shortage.order_id, OrderStatus.REJECTED, reason)
    if user_id is not None:
        unit.outbox.emit(
            OrderRejected(
                order_id=shortage.order_id,
                user_id=user_id,
                reason=reason,
                shortages=shortage.shortages,
            ),
        )


def _fit(text: str, limit: int) -> str:
    """`text`, cut to `limit` characters with an ellipsis (the shortages stay whole in
    the event)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _settle(
    unit: Unit, order_id: str, status: OrderStatus, reason: str | None = None
) -> str | None:
    """Move a PENDING order to `status` in one conditional update; its user id if it
    moved, None if it was not pending. An unknown order is an error."""
    table = Order.__table__
    moved = unit.session.execute(
        update(table)
        .where(table.c.id == order_id, table.c.status == OrderStatus.PENDING)
        .values(status=status, reason=reason, updated_at=utcnow())
        .returning(table.c.user_id)
    ).first()
    if moved is not None:
        return str(moved.user_id)
    if unit.session.scalar(select(table.c.id).where(table.c.id == order_id)) is None:
        raise OrderNotFound(order_id)
    return None


def remember_user(unit: Unit, user: UserRegistered) -> None:
    _upsert_newer(unit, KnownUser, {"id": user.user_id, "version": user.version})


def remember_product(unit: Unit, product: ProductCreated) -> None:
    _upsert_newer(
        unit,
        KnownProduct,
        {"id": product.product_id, "name": product.name, "version": product.version},
    )


def _upsert_newer(
    unit: Unit, model: type[KnownUser] | type[KnownProduct], row: dict[str, Any]
) -> None:
    """Insert the view row, or overwrite it only if the event's version is newer."""
    table = model.__table__
    statement = insert(unit.session, table).values(**row)
    unit.session.execute(
        statement.on_conflict_do_update(
            index_elements=[table.c.id],
            set_={name: getattr(statement.excluded, name) for name in row if name != "id"},
            where=table.c.version < statement.excluded.version,
        )
    )
