"""`python -m tools.ops.tail` without a broker: records in, lines out."""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from shared.messaging.deadletter import (
    H_CONSUMER,
    H_DROPPED,
    H_ERROR,
    H_OFFSET,
    H_PARTITION,
    H_REASON,
    H_TIME,
    H_TOPIC,
    Reason,
)
from shared.messaging.envelope import Envelope, KafkaHeaders, dump_json, format_time, new_id
from tests.helpers import ConsumedRecord
from tools.ops.tail import UNDECODABLE, WIDEST, View, since, stack_topics

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 30, 16, 0, 0, 123456, tzinfo=UTC)
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
ORDER, OTHER_ORDER, PRODUCT = "order-1", "order-2", "product-1"


@dataclass
class Record(ConsumedRecord):
    """A consumed record, as much of one as the tail reads."""

    value_: bytes | None
    headers_: KafkaHeaders = field(default_factory=list)
    key_: bytes | None = None
    topic_: str = "orders"
    partition_: int = 0
    offset_: int = 0
    timestamp_: tuple[int, int] = (1, int(T0.timestamp() * 1000))

    def timestamp(self) -> tuple[int, int]:
        return self.timestamp_


def event(
    type_: str,
    key: str,
    *,
    seconds: float = 0,
    correlation: str | None = ORDER,
    cause: str | None = None,
    event_id: str | None = None,
) -> Envelope:
    return Envelope(
        type=type_,
        source="/services/test",
        key=key,
        data=dump_json({"key": key}),
        time=T0 + timedelta(seconds=seconds),
        correlation_id=correlation,
        causation_id=cause,
        traceparent=f"00-{TRACE}-00f067aa0ba902b7-01",
        id=event_id or new_id(),
    )


def record(
    envelope: Envelope, topic: str = "orders", partition: int = 0, offset: int = 0
) -> Record:
    return Record(
        envelope.data, envelope.headers(), envelope.key.encode(), topic, partition, offset
    )


def columns(line: str) -> list[str]:
    return line.split()


def starts(line: str) -> list[int]:
    """Where each column after the time starts (columns are two spaces apart)."""
    return [match.start() for match in re.finditer(r"(?<=  )\S", line)]


def replaced(headers: KafkaHeaders, name: str, value: bytes) -> KafkaHeaders:
    return [(n, v) for n, v in headers if n != name] + [(name, value)]


def test_a_line_shows_time_place_type_key_ids_and_trace() -> None:
    created = event("order-created", ORDER, cause="request-9f3a2b1c")

    (line,) = View().batch([record(created, "orders", 2, 41)])

    assert columns(line) == [
        "2026-11-30T16:00:00.123Z",
        "orders[2]@41",
        "order-created",
        ORDER,
        created.id[:8],
        "←",
        "request-",
        TRACE,
    ]
    assert "\x1b" not in line


def test_lines_are_ordered_by_time_across_partitions_and_aligned() -> None:
    late = event("order-confirmed", ORDER, seconds=2)
    early = event("stock-changed", PRODUCT, seconds=1)
    first = event("order-created", ORDER, seconds=0)
    records = [
        record(late, "orders", 0, 7),
        record(early, "stock-changes", 1, 12345),
        record(first, "orders", 0, 6),
    ]

    lines = View().batch(records)

    assert [columns(line)[2] for line in lines] == [
        "order-created",
        "stock-changed",
        "order-confirmed",
    ]
    assert starts(lines[0]) == starts(lines[1]) == starts(lines[2])
    assert len(starts(lines[0])) == 5  # place, type, key, id ← cause, trace


def test_an_event_without_cause_or_trace_prints_dashes() -> None:
    bare = Envelope(type="signing-keys", source="/services/user", key="", data=b"{}", time=T0)

    (line,) = View().batch([record(bare, "users")])

    assert columns(line)[3:] == ["-", bare.id[:8], "←", "-", "-"]


def test_colours_only_when_asked_and_alignment_ignores_them() -> None:
    records = [record(event("order-created", ORDER)), record(event("stock-changed", PRODUCT))]

    plain = View().batch(records)
    coloured = View(colour=True).batch(records)

    assert all("\x1b[" in line for line in coloured)
    assert [re.sub(r"\x1b\[\d+m", "", line) for line in coloured] == plain


GOOD = event("order-created", ORDER).headers()


@pytest.mark.parametrize(
    ("value", "headers", "reason"),
    [
        (b'{"a": 1}', [], "missing CloudEvents header(s): ce_specversion, ce_id"),
        (b"not json", GOOD, "value is not JSON"),
        (None, GOOD, "record has no value"),
        (b"{}", replaced(GOOD, "ce_time", b"yesterday"), "ce_time is not RFC 3339"),
        (b"{}", replaced(GOOD, "ce_type", b"\xff\xfe"), "header is not UTF-8 text"),
        (b"{}", replaced(GOOD, "ce_specversion", b"0.3"), "unsupported ce_specversion"),
    ],
)
def test_a_malformed_record_is_one_line_marked_undecodable_with_its_place_and_reason(
    value: bytes | None, headers: KafkaHeaders, reason: str
) -> None:
    bad = Record(value, headers, b"order-1\n\x1b[31m", "orders", 1, 99, (1, 1_700_000_000_000))

    (line,) = View().batch([bad])

    assert line.startswith("2023-11-14T22:13:20.000Z  orders[1]@99  UNDECODABLE  ")
    assert "\n" not in line and "\x1b" not in line
    assert "order-1\\n\\x1b[31m" in line
    assert f"undecodable: {reason}" in line


def test_a_record_without_a_timestamp_prints_a_dash_for_its_time_and_sorts_first() -> None:
    bare = Record(b"?", [], None, "orders", 0, 5, (0, -1))

    lines = View().batch([record(event("order-created", ORDER)), bare])

    assert columns(lines[0])[:4] == ["-", "orders[0]@5", UNDECODABLE, "-"]


def test_a_dead_letter_shows_its_reason_where_it_came_from_and_when_it_was_parked() -> None:
    failed = event("order-created", ORDER)
    parked_at = T0 + timedelta(minutes=5)
    headers = failed.headers() + [
        (H_REASON, Reason.HANDLER_FAILED.encode()),
        (H_ERROR, b"RuntimeError: boom"),
        (H_TOPIC, b"orders"),
        (H_PARTITION, b"2"),
        (H_OFFSET, b"41"),
        (H_CONSUMER, b"inventory"),
        (H_TIME, format_time(parked_at).encode()),
    ]
    letter = Record(failed.data, headers, ORDER.encode(), "dead-letters", 0, 3)

    (line,) = View().batch([letter])

    assert columns(line)[:4] == [
        "2026-11-30T16:05:00.123Z",
        "dead-letters[0]@3",
        "order-created",
        ORDER,
    ]
    assert line.endswith(
        "dead letter: handler-failed by inventory from orders[2]@41: RuntimeError: boom"
    )


def test_a_dead_letter_parked_without_its_record_says_so() -> None:
    headers: KafkaHeaders = [
        (H_REASON, Reason.INVALID_ENVELOPE.encode()),
        (H_TOPIC, b"orders"),
        (H_PARTITION, b"0"),
        (H_OFFSET, b"8"),
        (H_CONSUMER, b"order"),
        (H_DROPPED, b"key,value,headers"),
    ]

    (line,) = View().batch([Record(None, headers, None, "dead-letters", 1, 0)])

    assert columns(line)[2] == UNDECODABLE
    assert line.endswith(
        "dead letter: invalid-envelope by order from orders[0]@8 "
        "(parked without its key,value,headers)"
    )


def test_an_outbox_relays_notice_of_a_parked_row_says_where_the_row_waits() -> None:
    headers: KafkaHeaders = [
        (H_REASON, b"unpublishable"),
        (H_ERROR, b"refused by Kafka: MSG_SIZE_TOO_LARGE"),
        (H_TOPIC, b"orders"),
        (H_CONSUMER, b"order-outbox"),
        ("dlq_source", b"outbox"),
        ("ce_id", b"e-1"),
        ("ce_type", b"order-created"),
    ]

    (line,) = View().batch([Record(None, headers, ORDER.encode(), "dead-letters", 0, 4)])

    assert line.endswith(
        "parked in its outbox: unpublishable by order-outbox for orders (not published): "
        "refused by Kafka: MSG_SIZE_TOO_LARGE"
    )


def test_json_mode_prints_one_object_per_line_with_every_field() -> None:
    created = event("order-created", ORDER, cause="request-1")
    bad = Record(b"not json", [], b"k", "stock", 2, 7, (1, int(T0.timestamp()) * 1000 + 5000))

    lines = View(json=True).batch([record(created, "orders", 1, 4), bad])

    first, second = (json.loads(line) for line in lines)
    assert first == {
        "time": "2026-11-30T16:00:00.123Z",
        "topic": "orders",
        "partition": 1,
        "offset": 4,
        "type": "order-created",
        "key": ORDER,
        "id": created.id,
        "source": "/services/test",
        "correlation_id": ORDER,
        "causation_id": "request-1",
        "trace_id": TRACE,
        "traceparent": created.traceparent,
        "data": {"key": ORDER},
        "undecodable": None,
        "dead_letter": None,
    }
    assert second["type"] is None and second["key"] == "k" and second["data"] is None
    assert second["undecodable"].startswith("missing CloudEvents header(s)")
    assert second["dead_letter"] is None


def test_payload_ends_the_line_and_long_keys_are_cut() -> None:
    long_key = "k" * (WIDEST + 20)

    (line,) = View(payload=True).batch([record(event("order-created", long_key))])

    assert line.endswith('{"key":"' + long_key + '"}')
    assert "k" * (WIDEST - 1) + "…" in columns(line)


def story() -> list[Record]:
    """One order's saga, another order's, and records around them, in arrival order."""
    created = event("order-created", ORDER, seconds=1, cause="request-1", event_id="created")
    changed = event("stock-changed", PRODUCT, seconds=2, cause="created", event_id="changed")
    # caused by the stock change, with another correlation, on a host whose clock is behind
    noted = event("audit-noted", "a", seconds=1.5, correlation="x", cause="changed", event_id="n")
    return [
        record(noted),
        record(created, "orders", 0, 0),
        record(event("stock-reserved", ORDER, seconds=2, cause="created"), "stock", 0, 0),
        record(changed, "stock-changes"),
        # caused by the audit event: a chain of two outside the correlation
        record(event("audit-filed", "a", seconds=0.5, correlation="y", cause="n")),
        record(event("order-created", OTHER_ORDER, correlation=OTHER_ORDER), "orders", 1, 0),
        record(event("product-created", PRODUCT, correlation="p"), "products"),
        record(event("audit-noted", "a", correlation="x", cause="elsewhere")),
        Record(b"not json", [], ORDER.encode(), "orders", 0, 1),
        Record(b"not json", [], OTHER_ORDER.encode(), "orders", 1, 1),
    ]


def test_order_keeps_its_events_those_correlated_with_them_and_their_effects() -> None:
    lines = View(order=ORDER).batch(story())

    assert [columns(line)[2] for line in lines] == [
        UNDECODABLE,  # keyed by the order; at its record's timestamp
        "audit-filed",  # caused by audit-noted
        "order-created",
        "audit-noted",  # caused by stock-changed
        "stock-reserved",
        "stock-changed",  # keyed by product, correlated with the order
    ]


def test_order_follows_the_correlation_of_its_keyed_events() -> None:
    keyed = event("order-created", ORDER, correlation="saga-7", seconds=2)
    correlated = event("stock-changed", PRODUCT, correlation="saga-7", seconds=1)
    stranger = event("stock-changed", PRODUCT, correlation="saga-8", seconds=3)

    lines = View(order=ORDER).batch([record(correlated), record(keyed), record(stranger)])

    assert [columns(line)[3] for line in lines] == [PRODUCT, ORDER]


def test_following_an_order_judges_each_record_as_it_arrives() -> None:
    view = View(order=ORDER)
    created = event("order-created", ORDER, event_id="created")
    arrivals = [
        record(event("product-created", PRODUCT, correlation="p")),
        record(created),
        record(event("stock-changed", PRODUCT, cause="created", correlation="z", event_id="c")),
        record(event("audit-noted", "audit", cause="c", correlation="y")),
        record(event("order-created", OTHER_ORDER, correlation=OTHER_ORDER)),
        Record(b"{}", [], ORDER.encode()),
    ]

    lines = [view.live(arrival) for arrival in arrivals]

    assert [columns(line)[2] if line else None for line in lines] == [
        None,
        "order-created",
        "stock-changed",
        "audit-noted",
        None,
        UNDECODABLE,
    ]


def test_since_takes_a_duration_back_from_now_or_a_time() -> None:
    before = datetime.now(UTC)
    back = since("15m")
    after = datetime.now(UTC)

    assert before - timedelta(minutes=15) <= back <= after - timedelta(minutes=15)
    assert since("2026-11-30T16:00:00Z") == datetime(2026, 11, 30, 16, tzinfo=UTC)
    for bad in ("yesterday", "15", "2026-11-30T16:00:00"):
        with pytest.raises(argparse.ArgumentTypeError):
            since(bad)


def test_the_stack_topics_are_the_published_ones_and_dead_letters_with_the_prefix() -> None:
    assert stack_topics("p-") == [
        "p-dead-letters",
        "p-orders",
        "p-products",
        "p-stock",
        "p-stock-changes",
        "p-users",
    ]
