from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import CheckConstraint, DateTime, Enum, ForeignKey, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.clock import utcnow
from shared.storage.tables import shared_tables


class Base(DeclarativeBase):
    pass


OutboxMessage, ProcessedEvent, TrustedKey, TrustedKeySet = shared_tables(Base)


class Stock(Base):
    """What inventory holds of one product: free to reserve, and reserved by orders."""

    __tablename__ = "stock"
    __table_args__ = (
        CheckConstraint("available >= 0", name="ck_stock_available_not_negative"),
        CheckConstraint("reserved >= 0", name="ck_stock_reserved_not_negative"),
    )

    product_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    available: Mapped[int] = mapped_column(Integer, default=0)
    reserved: Mapped[int] = mapped_column(Integer, default=0)
    version: Mapped[int] = mapped_column(Integer, default=0)
    """Bumped by every change and published with it in `stock-changed`."""
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class OrderStatus(enum.StrEnum):
    RESERVED = "reserved"
    """Holds stock: its reservations are the rows of `reservations`."""
    SHORT = "short"
    """A shortage was reported; it holds nothing."""
    RELEASED = "released"
    """Held stock until it was cancelled; holds nothing now."""
    CANCELLED = "cancelled"
    """Cancelled before inventory saw it created: a tombstone, so that a late
    `order-created` reserves nothing."""


class Order(Base):
    """What inventory knows of one order. Its primary key makes each order reserve at
    most once, whatever redelivers or redrives its events."""

    __tablename__ = "orders"

    order_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[OrderStatus] = mapped_column(
        Enum(
            OrderStatus,
            native_enum=False,
            create_constraint=True,
            length=16,
            values_callable=lambda statuses: [s.value for s in statuses],
            name="order_status",
        )
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class Reservation(Base):
    """Stock held for an order: one row per product, deleted when released."""

    __tablename__ = "reservations"
    __table_args__ = (CheckConstraint("quantity > 0", name="ck_reservations_quantity_positive"),)

    order_id: Mapped[str] = mapped_column(ForeignKey("orders.order_id"), primary_key=True)
    product_id: Mapped[str] = mapped_column(
        ForeignKey("stock.product_id"), primary_key=True, index=True
    )
    quantity: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
