"""A fifth service in one file: a loyalty point per ordered line (docs/adding-a-service.md)."""

from pathlib import Path

from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.messaging.events import Event
from shared.messaging.router import EventRouter
from shared.messaging.unit_of_work import Unit
from shared.runtime.app import app_factory
from shared.runtime.service import ServiceSpec
from shared.runtime.settings import service_settings
from shared.storage.tables import shared_tables


class OrderCreated(Event, type="order-created", topic="orders", key="order_id"):
    order_id: str
    user_id: str
    items: list[object]


class PointsEarned(Event, type="points-earned", topic="loyalty", key="user_id"):
    user_id: str
    order_id: str
    points: int


class Base(DeclarativeBase):
    pass


class Points(Base):
    __tablename__ = "points"
    order_id: Mapped[str] = mapped_column(primary_key=True)
    user_id: Mapped[str]
    points: Mapped[int]


events = EventRouter()


@events.on
def earn_points(unit: Unit, order: OrderCreated) -> None:
    earned = PointsEarned(user_id=order.user_id, order_id=order.order_id, points=len(order.items))
    unit.session.add(Points(**earned.model_dump()))
    unit.outbox.emit(earned)


LoyaltySettings = service_settings("loyalty", port=8005)
SPEC = ServiceSpec(
    name="loyalty",
    router=events,
    publishes=[PointsEarned],
    tables=shared_tables(Base),
    migrations=Path(__file__).parent / "migrations",
)
create_app = app_factory(SPEC, LoyaltySettings, title="Loyalty service")
