"""Event payloads that know where they go: their CloudEvents type, their topic and the
field that keys them (so every event of one order, say, lands on one partition in order).

    class OrderCreated(Event, type="order-created", topic="orders", key="order_id"):
        order_id: str
        items: list[Line]

    unit.outbox.emit(OrderCreated(order_id=order.id, items=lines))

A publisher and each of its consumers keep their own model of one event (a consumer
declares only the fields it reads, and ignores the rest); `contracts/` holds the
publisher's JSON Schema, and a test checks every consumer's model against it."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel


class Event(BaseModel):
    """Base of every event payload. Subclasses name `type`, `topic` and `key` once, as
    class keywords; a subclass without them inherits its parent's."""

    event_type: ClassVar[str]
    topic: ClassVar[str]
    key_field: ClassVar[str]

    def __init_subclass__(
        cls,
        *,
        type: str | None = None,
        topic: str | None = None,
        key: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        if type is not None:
            cls.event_type = type
        if topic is not None:
            cls.topic = topic
        if key is not None:
            cls.key_field = key

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        declared = [name for name in ("event_type", "topic", "key_field") if hasattr(cls, name)]
        if not declared:
            return  # an abstract base of events, such as this one
        if len(declared) < 3:
            raise TypeError(f"{cls.__name__} must declare type, topic and key together")
        if cls.key_field not in cls.model_fields:
            raise TypeError(f"{cls.__name__}: key {cls.key_field!r} is not one of its fields")

    @property
    def event_key(self) -> str:
        """The Kafka key: the value of the field named by `key`."""
        return str(getattr(self, self.key_field))


def is_event(candidate: object) -> bool:
    """Whether `candidate` is a concrete event class (one with a type, topic and key)."""
    return (
        isinstance(candidate, type)
        and issubclass(candidate, Event)
        and hasattr(candidate, "event_type")
    )
