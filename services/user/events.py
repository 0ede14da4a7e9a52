"""The user service's event contract: what it publishes and what it consumes."""

from __future__ import annotations

from pydantic import BaseModel, Field

USERS = "users"
ORDERS = "orders"

USER_REGISTERED = "user-registered"
ORDER_CREATED = "order-created"
ORDER_CONFIRMED = "order-confirmed"
ORDER_REJECTED = "order-rejected"
ORDER_CANCELLED = "order-cancelled"


class UserRegistered(BaseModel):
    """Published on `users`, keyed by user id."""

    user_id: str
    name: str
    email: str
    version: int = 1


class OrderConfirmed(BaseModel):
    """Consumed from `orders` (published by order), keyed by order id."""

    order_id: str = Field(min_length=1, max_length=64)
    user_id: str = Field(min_length=1, max_length=64)


class Shortage(BaseModel):
    product_id: str
    requested: int
    available: int


class OrderRejected(BaseModel):
    """Consumed from `orders` (published by order), keyed by order id."""

    order_id: str = Field(min_length=1, max_length=64)
    user_id: str = Field(min_length=1, max_length=64)
    reason: str
    shortages: list[Shortage] = Field(default_factory=list)


class OrderCancelled(BaseModel):
    """Consumed from `orders` (published by order), keyed by order id."""

    order_id: str = Field(min_length=1, max_length=64)
    user_id: str = Field(min_length=1, max_length=64)
