from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.clock import utcnow
from shared.storage.db import UtcDateTime
from shared.storage.tables import shared_tables


class Base(DeclarativeBase):
    pass


OutboxMessage, ProcessedEvent, TrustedKey, TrustedKeySet = shared_tables(Base)


class Product(Base):
    __tablename__ = "products"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    price_cents: Mapped[int] = mapped_column(BigInteger)
    in_stock: Mapped[bool] = mapped_column(Boolean, default=False)
    stock_version: Mapped[int] = mapped_column(Integer, default=0)
    """Version of the last `stock-changed` applied; older ones are stale."""
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
