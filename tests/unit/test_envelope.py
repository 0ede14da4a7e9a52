"""The event envelope: CloudEvents binary-mode headers, decoding and fingerprints."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import BaseModel, ValidationError

from shared.messaging.envelope import (
    H_CAUSATION,
    H_CONTENT_TYPE,
    H_CORRELATION,
    H_ID,
    H_SOURCE,
    H_SPECVERSION,
    H_TIME,
    H_TRACEPARENT,
    H_TRACESTATE,
    H_TYPE,
    REQUIRED_HEADERS,
    Envelope,
    HeaderValue,
    InvalidEnvelope,
    KafkaHeaders,
    format_time,
    new_id,
)
from tests.helpers import ConsumedRecord

pytestmark = pytest.mark.unit

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class Placed(BaseModel):
    order_id: str


def full_envelope() -> Envelope:
    return Envelope(
        type="order-created",
        source="/services/order",
        key="order-1",
        data=b'{"order_id":"order-1"}',
        correlation_id="order-1",
        causation_id="request-1",
        traceparent=TRACEPARENT,
        tracestate="vendor=abc",
    )


@dataclass
class Record(ConsumedRecord):
    """A consumed Kafka record, as much of it as the envelope reads."""

    value_: bytes | str | None
    headers_: KafkaHeaders | dict[str, HeaderValue] | None = field(default_factory=list)
    key_: bytes | str | None = b"order-1"
    topic_: str = "orders"
    partition_: int = 2
    offset_: int = 41


def without(headers: KafkaHeaders, name: str) -> KafkaHeaders:
    return [(n, v) for n, v in headers if n != name]


def with_header(headers: KafkaHeaders, name: str, value: HeaderValue) -> KafkaHeaders:
    return [*without(headers, name), (name, value)]


# Round trip


def test_headers_round_trip_through_from_headers() -> None:
    sent = full_envelope()

    received = Envelope.from_headers(sent.headers(), sent.key, sent.data)

    assert received == sent


def test_text_headers_and_a_header_dict_round_trip_too() -> None:
    sent = full_envelope()

    assert Envelope.from_headers(sent.text_headers(), sent.key, sent.data) == sent
    assert Envelope.from_headers(dict(sent.headers()), sent.key, sent.data) == sent


def test_headers_are_cloudevents_binary_mode_and_omit_unset_optionals() -> None:
    sent = Envelope(type="tick", source="/tests", key="k", data=b"{}")

    names = dict(sent.text_headers())

    assert names[H_SPECVERSION] == "1.0"
    assert names[H_CONTENT_TYPE] == "application/json"
    assert (names[H_ID], names[H_TYPE], names[H_SOURCE]) == (sent.id, "tick", "/tests")
    for optional in (H_CORRELATION, H_CAUSATION, H_TRACEPARENT, H_TRACESTATE):
        assert optional not in names
    assert all(isinstance(value, bytes) for _, value in sent.headers())


def test_a_consumed_record_decodes_with_its_position() -> None:
    sent = full_envelope()

    received = Envelope.from_message(Record(sent.data, sent.headers(), key_=b"order-1"))

    assert received == sent.at("orders", 2, 41)
    assert received.payload(Placed) == Placed(order_id="order-1")
    assert received.json() == {"order_id": "order-1"}


def test_a_record_without_ce_time_is_stamped_now() -> None:
    sent = full_envelope()
    before = datetime.now(UTC)

    received = Envelope.from_headers(without(sent.headers(), H_TIME), sent.key, sent.data)

    assert before <= received.time <= datetime.now(UTC)


def test_a_charset_parameter_on_the_content_type_is_accepted() -> None:
    sent = full_envelope()
    headers = with_header(sent.headers(), H_CONTENT_TYPE, b"application/json; charset=utf-8")

    assert Envelope.from_headers(headers, sent.key, sent.data) == sent


# Malformed records


@pytest.mark.parametrize("name", REQUIRED_HEADERS)
@pytest.mark.parametrize("absent", ["dropped", "empty"])
def test_a_missing_required_header_is_an_invalid_envelope_naming_it(name: str, absent: str) -> None:
    sent = full_envelope()
    headers = (
        without(sent.headers(), name)
        if absent == "dropped"
        else (with_header(sent.headers(), name, b""))
    )

    with pytest.raises(InvalidEnvelope, match=name):
        Envelope.from_headers(headers, sent.key, sent.data)


@pytest.mark.parametrize("version", [b"0.3", b"1", b"2.0"])
def test_another_specversion_is_an_invalid_envelope(version: bytes) -> None:
    sent = full_envelope()
    headers = with_header(sent.headers(), H_SPECVERSION, version)

    with pytest.raises(InvalidEnvelope, match="specversion"):
        Envelope.from_headers(headers, sent.key, sent.data)


def test_another_content_type_is_an_invalid_envelope() -> None:
    sent = full_envelope()
    headers = with_header(sent.headers(), H_CONTENT_TYPE, b"application/avro")

    with pytest.raises(InvalidEnvelope, match="content-type"):
        Envelope.from_headers(headers, sent.key, sent.data)


@pytest.mark.parametrize("value", [b"{not json", b"", b"\xff\xfe"])
def test_a_value_that_is_not_json_is_an_invalid_envelope(value: bytes) -> None:
    with pytest.raises(InvalidEnvelope, match="JSON"):
        Envelope.from_message(Record(value, full_envelope().headers()))


def test_a_record_without_a_value_is_an_invalid_envelope() -> None:
    with pytest.raises(InvalidEnvelope, match="no value"):
        Envelope.from_message(Record(None, full_envelope().headers()))


@pytest.mark.parametrize("name", [H_TYPE, H_CORRELATION, H_TRACEPARENT])
def test_a_header_that_is_not_utf8_is_an_invalid_envelope(name: str) -> None:
    sent = full_envelope()
    headers = with_header(sent.headers(), name, b"\xff\xfe")

    with pytest.raises(InvalidEnvelope, match="UTF-8"):
        Envelope.from_headers(headers, sent.key, sent.data)


def test_a_key_that_is_not_utf8_is_an_invalid_envelope() -> None:
    sent = full_envelope()

    with pytest.raises(InvalidEnvelope, match="key"):
        Envelope.from_message(Record(sent.data, sent.headers(), key_=b"\xff"))


@pytest.mark.parametrize(
    "value", [b"2024-05-06T07:08:09", b"2024-05-06T07:08:09.123456", b"2024-05-06"]
)
def test_a_ce_time_without_an_offset_is_an_invalid_envelope(value: bytes) -> None:
    sent = full_envelope()
    headers = with_header(sent.headers(), H_TIME, value)

    with pytest.raises(InvalidEnvelope, match="offset"):
        Envelope.from_headers(headers, sent.key, sent.data)


@pytest.mark.parametrize("value", [b"yesterday", b"2024-13-01T00:00:00Z", b"1715000000"])
def test_a_ce_time_that_is_no_time_is_an_invalid_envelope(value: bytes) -> None:
    sent = full_envelope()
    headers = with_header(sent.headers(), H_TIME, value)

    with pytest.raises(InvalidEnvelope, match="ce_time"):
        Envelope.from_headers(headers, sent.key, sent.data)


def test_a_payload_that_does_not_match_its_model_raises_a_validation_error() -> None:
    event = replace(full_envelope(), data=b'{"order": 1}')

    with pytest.raises(ValidationError):
        event.payload(Placed)


# Fingerprint


def test_the_fingerprint_of_identical_events_is_equal() -> None:
    event = full_envelope()
    redelivered = Envelope.from_message(Record(event.data, event.headers()))

    assert redelivered.fingerprint == event.fingerprint
    assert len(event.fingerprint) == 64


def test_the_fingerprint_ignores_id_time_and_tracing() -> None:
    event = full_envelope()
    republished = replace(
        event,
        id="another-id",
        time=event.time + timedelta(seconds=5),
        correlation_id=None,
        causation_id=None,
        traceparent=None,
    )

    assert republished.fingerprint == event.fingerprint


@pytest.mark.parametrize(
    "change",
    [
        {"data": b'{"order_id":"order-2"}'},
        {"data": b'{"order_id": "order-1"}'},
        {"type": "order-cancelled"},
        {"key": "order-2"},
    ],
    ids=["payload", "payload-bytes", "type", "key"],
)
def test_the_fingerprint_differs_when_the_event_differs(change: dict[str, object]) -> None:
    event = full_envelope()

    assert replace(event, **change).fingerprint != event.fingerprint  # type: ignore[arg-type]


def test_the_fingerprint_tells_apart_fields_that_concatenate_alike() -> None:
    one = Envelope(type="ab", source="/s", key="c", data=b"{}")
    other = Envelope(type="a", source="/s", key="bc", data=b"{}")

    assert one.fingerprint != other.fingerprint


# Time


def test_time_is_rfc3339_in_utc_with_a_z_suffix() -> None:
    assert format_time(datetime(2024, 5, 6, 7, 8, 9, 123456, UTC)) == (
        "2024-05-06T07:08:09.123456Z"
    )
    plus_two = timezone(timedelta(hours=2))
    assert format_time(datetime(2024, 5, 6, 9, 8, 9, tzinfo=plus_two)) == (
        "2024-05-06T07:08:09.000000Z"
    )


def test_the_ce_time_header_is_the_event_time_in_utc() -> None:
    event = replace(full_envelope(), time=datetime(2024, 5, 6, 7, 8, 9, 5, UTC))

    assert dict(event.text_headers())[H_TIME] == "2024-05-06T07:08:09.000005Z"


def test_new_ids_are_uuid7_unique_and_sort_by_the_millisecond_they_were_made() -> None:
    before = time.time_ns() // 1_000_000
    made = [new_id() for _ in range(20_000)]
    after = time.time_ns() // 1_000_000

    assert len(set(made)) == len(made)
    parsed = [uuid.UUID(i) for i in made]
    assert {(u.version, u.variant) for u in parsed} == {(7, uuid.RFC_4122)}
    stamps = [u.int >> 80 for u in parsed]
    assert before <= stamps[0] and stamps[-1] <= after
    assert stamps == sorted(stamps)  # made later, never sorted earlier
