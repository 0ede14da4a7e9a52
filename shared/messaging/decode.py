"""Decode a consumed record once: into an event with its validated payload, a dead letter
with its reason, or `SKIPPED` (another service's event that this one does not handle)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Final

import orjson
from confluent_kafka import Message
from pydantic import ValidationError

from shared.messaging.deadletter import DeadLetter, Reason
from shared.messaging.envelope import Envelope, InvalidEnvelope
from shared.messaging.router import EventRouter, Received


class _Skipped:
    def __repr__(self) -> str:
        return "SKIPPED"


SKIPPED: Final = _Skipped()


def decode(
    message: Message, router: EventRouter, owned_topics: Collection[str], topic_prefix: str = ""
) -> Received[Any] | DeadLetter | _Skipped:
    """A type with no handler is skipped on a topic the service does not own (it is for
    other readers) and dead-lettered on one it owns (nobody else will read it). A type it
    handles is taken only from that type's own topic (`topic_prefix` + its model's): on any
    other it is dead-lettered, since only the topic's owner may write it (a service may not
    pass its own record off as another's event)."""
    try:
        event = Envelope.from_message(message, check_json=False)
    except InvalidEnvelope as exc:
        return DeadLetter(Reason.INVALID_ENVELOPE, str(exc))
    except Exception as exc:  # anything else about this record that cannot be read
        return DeadLetter(Reason.INVALID_ENVELOPE, repr(exc))
    route = router.routes.get(event.type)
    if route is None:
        if message.topic() not in owned_topics:
            return SKIPPED
        return DeadLetter(Reason.UNKNOWN_TYPE, f"unknown event type {event.type!r}")
    if message.topic() != topic_prefix + route.model.topic:
        return DeadLetter(
            Reason.WRONG_TOPIC,
            f"{event.type!r} belongs on {topic_prefix + route.model.topic!r},"
            f" not {message.topic()!r}",
        )
    try:
        payload = route.model.model_validate_json(event.data)
    except ValidationError as exc:
        try:
            orjson.loads(event.data)
        except orjson.JSONDecodeError as not_json:
            return DeadLetter(Reason.INVALID_ENVELOPE, f"value is not JSON: {not_json}")
        return DeadLetter(Reason.INVALID_PAYLOAD, str(exc))
    return Received(event, payload, message)
