"""The order service's derived views: what it keeps only from other services' events,
rebuilt from their topics by `python -m tools.replay order` (docs/replay.md)."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from services.order import handlers
from services.order.models import KnownProduct, KnownUser
from shared.messaging.replay import View


def _reset_users(session: Session) -> None:
    session.execute(delete(KnownUser))


def _users(session: Session) -> list[tuple[object, ...]]:
    query = select(KnownUser.id, KnownUser.version).order_by(KnownUser.id)
    return [tuple(row) for row in session.execute(query)]


def _reset_products(session: Session) -> None:
    session.execute(delete(KnownProduct))


def _products(session: Session) -> list[tuple[object, ...]]:
    query = select(KnownProduct.id, KnownProduct.name, KnownProduct.version)
    return [tuple(row) for row in session.execute(query.order_by(KnownProduct.id))]


VIEWS = (
    View(
        name="known-users",
        tables=("known_users",),
        handlers=(handlers.remember_user,),
        reset=_reset_users,
        rows=_users,
        about="who may place orders, from user's user-registered",
    ),
    View(
        name="known-products",
        tables=("known_products",),
        handlers=(handlers.remember_product,),
        reset=_reset_products,
        rows=_products,
        about="what may be ordered, from product's product-created",
    ),
)
