"""The event envelope: a JSON payload plus CloudEvents 1.0 binary-mode Kafka headers.

On the wire an event is a Kafka record whose key is the aggregate id, whose value is the
JSON payload, and whose headers carry the CloudEvents attributes (`ce_*`), the
`content-type`, and the W3C `traceparent` of the span that emitted it.
"""

from __future__ import annotations

import builtins
import hashlib
import os
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import orjson
from pydantic import BaseModel

from shared.clock import utcnow

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/json"

H_SPECVERSION = "ce_specversion"
H_ID = "ce_id"
H_TYPE = "ce_type"
H_SOURCE = "ce_source"
H_TIME = "ce_time"
H_CORRELATION = "ce_correlationid"
H_CAUSATION = "ce_causationid"
H_CONTENT_TYPE = "content-type"
H_TRACEPARENT = "traceparent"
H_TRACESTATE = "tracestate"

REQUIRED_HEADERS = (H_SPECVERSION, H_ID, H_TYPE, H_SOURCE)
_OURS = frozenset(
    {
        *REQUIRED_HEADERS,
        H_TIME,
        H_CORRELATION,
        H_CAUSATION,
        H_CONTENT_TYPE,
        H_TRACEPARENT,
        H_TRACESTATE,
    }
)

M = TypeVar("M", bound=BaseModel)


class InvalidEnvelope(ValueError):
    """A Kafka record that is not a well-formed event of ours."""


HeaderValue = str | bytes | None
KafkaHeaders = list[tuple[str, HeaderValue]]
"""Headers as confluent-kafka takes and gives them."""


class KafkaRecord(Protocol):
    """What the envelope needs of a `confluent_kafka.Message`."""

    def headers(self) -> KafkaHeaders | dict[str, HeaderValue] | None: ...
    def key(self) -> bytes | str | None: ...
    def value(self) -> bytes | str | None: ...
    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...


def new_id() -> str:
    """A UUIDv7 (RFC 9562): 48 bits of Unix time in milliseconds, then 74 random bits.
    Ids made later sort later, so every index keyed by them (processed events, outbox
    rows, orders, the chain) grows at its right edge: a commit dirties a few pages rather
    than one page per row, as random (v4) ids would."""
    random_bits = int.from_bytes(os.urandom(10), "big")
    value = (
        (time.time_ns() // 1_000_000 & _MS_MASK) << 80
        | 0x7 << 76  # version 7
        | (random_bits >> 62 & 0xFFF) << 64
        | 0b10 << 62  # the RFC's variant
        | random_bits & _LOW_MASK
    )
    return str(uuid.UUID(int=value))


_MS_MASK = (1 << 48) - 1
_LOW_MASK = (1 << 62) - 1


def format_time(value: datetime) -> str:
    """RFC 3339 with a `Z` suffix, as CloudEvents recommends."""
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def dump_json(payload: BaseModel | dict[str, Any]) -> bytes:
    if isinstance(payload, BaseModel):
        return orjson.dumps(payload.model_dump(mode="json"))
    return orjson.dumps(payload)


@dataclass(frozen=True, slots=True)
class Envelope:
    """One event. `topic`, `partition` and `offset` are set only on consumed events."""

    type: str
    source: str
    key: str
    data: bytes
    id: str = field(default_factory=new_id)
    time: datetime = field(default_factory=utcnow)
    correlation_id: str | None = None
    causation_id: str | None = None
    traceparent: str | None = None
    tracestate: str | None = None
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None

    def payload(self, model: builtins.type[M]) -> M:
        """Validate the JSON payload against `model` (raises pydantic.ValidationError)."""
        return model.model_validate_json(self.data)

    def json(self) -> Any:
        return orjson.loads(self.data)

    @property
    def fingerprint(self) -> str:
        """A digest of what makes two deliveries of one event id the same event."""
        digest = hashlib.sha256()
        for part in (self.type.encode(), self.key.encode(), self.data):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
        return digest.hexdigest()

    def text_headers(self) -> list[tuple[str, str]]:
        """The CloudEvents binary-mode headers, `traceparent` and `tracestate`, as text."""
        headers = [
            (H_SPECVERSION, SPEC_VERSION),
            (H_ID, self.id),
            (H_TYPE, self.type),
            (H_SOURCE, self.source),
            (H_TIME, format_time(self.time)),
            (H_CONTENT_TYPE, CONTENT_TYPE),
        ]
        optional = (
            (H_CORRELATION, self.correlation_id),
            (H_CAUSATION, self.causation_id),
            (H_TRACEPARENT, self.traceparent),
            (H_TRACESTATE, self.tracestate),
        )
        headers.extend((name, value) for name, value in optional if value)
        return headers

    def headers(self) -> KafkaHeaders:
        return [(name, value.encode()) for name, value in self.text_headers()]

    def at(self, topic: str, partition: int, offset: int) -> Envelope:
        return replace(self, topic=topic, partition=partition, offset=offset)

    @classmethod
    def from_headers(
        cls,
        headers: KafkaHeaders | list[tuple[str, str]] | dict[str, HeaderValue],
        key: str,
        data: bytes,
    ) -> Envelope:
        pairs = headers.items() if isinstance(headers, dict) else headers
        try:  # other headers are the producer's business, whatever their bytes
            text = {
                name: value.decode() if isinstance(value, bytes) else value
                for name, value in pairs
                if value is not None and name in _OURS
            }
        except UnicodeDecodeError as exc:
            raise InvalidEnvelope(f"header is not UTF-8 text: {exc}") from exc
        missing = [name for name in REQUIRED_HEADERS if not text.get(name)]
        if missing:
            raise InvalidEnvelope(f"missing CloudEvents header(s): {', '.join(missing)}")
        if text[H_SPECVERSION] != SPEC_VERSION:
            raise InvalidEnvelope(f"unsupported ce_specversion {text[H_SPECVERSION]!r}")
        content_type = text.get(H_CONTENT_TYPE, CONTENT_TYPE)
        if content_type.split(";")[0].strip() != CONTENT_TYPE:
            raise InvalidEnvelope(f"unsupported content-type {content_type!r}")
        try:
            time = datetime.fromisoformat(text[H_TIME]) if H_TIME in text else utcnow()
        except ValueError as exc:
            raise InvalidEnvelope(f"ce_time is not RFC 3339: {text[H_TIME]!r}") from exc
        if time.tzinfo is None:
            raise InvalidEnvelope("ce_time has no UTC offset")
        return cls(
            type=text[H_TYPE],
            source=text[H_SOURCE],
            key=key,
            data=data,
            id=text[H_ID],
            time=time,
            correlation_id=text.get(H_CORRELATION),
            causation_id=text.get(H_CAUSATION),
            traceparent=text.get(H_TRACEPARENT),
            tracestate=text.get(H_TRACESTATE),
        )

    @classmethod
    def from_message(cls, message: KafkaRecord, *, check_json: bool = True) -> Envelope:
        """Decode a consumed record; raises InvalidEnvelope for anything malformed.

        `check_json=False` leaves the value to the caller, who parses it anyway."""
        raw_key = message.key()
        value = message.value()
        if value is None:
            raise InvalidEnvelope("record has no value")
        data = value.encode() if isinstance(value, str) else value
        try:
            key = raw_key.decode() if isinstance(raw_key, bytes) else (raw_key or "")
        except UnicodeDecodeError as exc:
            raise InvalidEnvelope("record key is not UTF-8 text") from exc
        envelope = cls.from_headers(message.headers() or [], key, data)
        if check_json:
            try:
                orjson.loads(data)
            except orjson.JSONDecodeError as exc:
                raise InvalidEnvelope(f"value is not JSON: {exc}") from exc
        return envelope.at(message.topic() or "", message.partition() or 0, message.offset() or 0)
