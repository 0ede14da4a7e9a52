from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from services.order.models import OrderStatus

MAX_ITEMS = 100


class LineIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    product_id: str = Field(min_length=1, max_length=64)
    quantity: int = Field(ge=1, le=10_000)


class OrderIn(BaseModel):
    """An order of the signed-in user (the token says who)."""

    model_config = ConfigDict(extra="forbid")

    items: list[LineIn] = Field(min_length=1, max_length=MAX_ITEMS)


class LineOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    product_id: str
    quantity: int


class OrderOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    user_id: str
    items: list[LineOut] = Field(validation_alias="lines")
    status: OrderStatus
    reason: str | None
    created_at: datetime


class OrderEventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str = Field(validation_alias="event_id")
    type: str
    source: str
    time: datetime
    correlation_id: str | None
    causation_id: str | None
    traceparent: str | None
    topic: str
    partition: int
    offset: int
