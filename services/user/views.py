"""The user service's derived view: the notifications of order outcomes, rebuilt from the
`orders` topic by `python -m tools.replay user` (docs/replay.md)."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from services.user import handlers
from services.user.models import Notification
from shared.messaging.replay import View


def _reset_notifications(session: Session) -> None:
    session.execute(delete(Notification))


def _notifications(session: Session) -> list[tuple[object, ...]]:
    """What a notification says; its id and time are given again by a rebuild."""
    n = Notification
    query = select(n.user_id, n.order_id, n.type, n.message).order_by(n.order_id, n.type)
    return [tuple(row) for row in session.execute(query)]


VIEWS = (
    View(
        name="notifications",
        tables=("notifications",),
        handlers=(
            handlers.notify_order_confirmed,
            handlers.notify_order_rejected,
            handlers.notify_order_cancelled,
        ),
        reset=_reset_notifications,
        rows=_notifications,
        about="an order's outcome told to its customer, from order's confirmed, rejected and"
        " cancelled",
    ),
)
