"""The user service's event contract: what it publishes and what it consumes.

Consumed payloads declare only the fields the service reads and ignore the rest, so
publishers can add fields freely; `contracts/` holds what each publisher promises."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from shared.messaging.events import Event


class UserRegistered(Event, type="user-registered", topic="users", key="user_id"):
    """A new account. `version` grows with every change of one user."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "user_id": "0b7e4d2a-3c5f-4e8a-b1d9-6f2a7c8e4b35",
                    "name": "Ada Lovelace",
                    "email": "ada@example.com",
                    "version": 1,
                }
            ]
        }
    )

    user_id: str = Field(description="The user's id: the key.")
    name: str = Field(description="The name the user registered with.")
    email: str = Field(description="The user's email address, unique among users.")
    version: int = Field(1, description="Grows with every change of the user.")


PUBLISHES = (UserRegistered,)


# Consumed from `orders` (published by order), keyed by order id.


class OrderConfirmed(Event, type="order-confirmed", topic="orders", key="order_id"):
    order_id: str = Field(min_length=1, max_length=64)
    user_id: str = Field(min_length=1, max_length=64)


class Shortage(BaseModel):
    product_id: str
    requested: int
    available: int


class OrderRejected(Event, type="order-rejected", topic="orders", key="order_id"):
    order_id: str = Field(min_length=1, max_length=64)
    user_id: str = Field(min_length=1, max_length=64)
    reason: str
    shortages: list[Shortage] = Field(default_factory=list)


class OrderCancelled(Event, type="order-cancelled", topic="orders", key="order_id"):
    order_id: str = Field(min_length=1, max_length=64)
    user_id: str = Field(min_length=1, max_length=64)
