"""Redrive by reference (shared.messaging.redrive) without a broker: what it makes of a
dead letter's headers, every one of them hostile, and that it re-publishes the record it
re-read, never the dead letter's own content."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from shared.messaging.deadletter import H_CONSUMER, H_OFFSET, H_PARTITION, H_SOURCE, H_TOPIC
from shared.messaging.envelope import H_ID, KafkaHeaders
from shared.messaging.redrive import Reference, Skip, _redrive_one, reference

pytestmark = pytest.mark.unit

PREFIX = "p-"
TOPICS = {"p-users": 3, "p-orders": 3, "p-dead-letters": 3, "q-users": 3, "__consumer_offsets": 50}
"""What the redrive principal may see, with partition counts."""


def letter(**overrides: bytes | None) -> KafkaHeaders:
    """A consumer's dead letter of users[1]@42, with `overrides` (None leaves one out)."""
    headers: dict[str, bytes | None] = {
        H_ID: b"event-1",
        H_TOPIC: b"p-users",
        H_PARTITION: b"1",
        H_OFFSET: b"42",
        H_CONSUMER: b"inventory",
        **overrides,
    }
    return [(name, value) for name, value in headers.items() if value is not None]


def test_a_consumers_dead_letter_references_its_record() -> None:
    assert reference(letter(), PREFIX, TOPICS) == Reference("p-users", 1, 42, b"event-1")
    found = reference(letter(**{H_SOURCE: b"consumer", H_ID: None}), PREFIX, TOPICS)
    assert found == Reference("p-users", 1, 42, None), "a record parked without a ce_id"


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        (letter(**{H_SOURCE: b"outbox"}), Skip.NO_RECORD),
        (letter(**{H_SOURCE: b""}), Skip.NO_RECORD),
        (letter(**{H_CONSUMER: None}), Skip.NO_RECORD),
        (letter(**{H_CONSUMER: b""}), Skip.NO_RECORD),
        (letter(**{H_TOPIC: None}), Skip.MALFORMED),
        (letter(**{H_PARTITION: None}), Skip.MALFORMED),
        (letter(**{H_OFFSET: None}), Skip.MALFORMED),
        (letter(**{H_TOPIC: b""}), Skip.MALFORMED),
        (letter(**{H_TOPIC: b"p-users\x00"}), Skip.MALFORMED),
        (letter(**{H_TOPIC: b"p-users\n"}), Skip.MALFORMED),
        (letter(**{H_TOPIC: b"p-users/../orders"}), Skip.MALFORMED),
        (letter(**{H_TOPIC: b"p-" + b"u" * 300}), Skip.MALFORMED),
        (letter(**{H_TOPIC: "p-üsers".encode()}), Skip.MALFORMED),
        (letter(**{H_PARTITION: b"one"}), Skip.MALFORMED),
        (letter(**{H_PARTITION: b"-1"}), Skip.MALFORMED),
        (letter(**{H_PARTITION: b"1.0"}), Skip.MALFORMED),
        (letter(**{H_PARTITION: b" 1"}), Skip.MALFORMED),
        (letter(**{H_PARTITION: b"1\n"}), Skip.MALFORMED),
        (letter(**{H_PARTITION: b"\x001"}), Skip.MALFORMED),
        (letter(**{H_PARTITION: "١".encode()}), Skip.MALFORMED),  # a digit, not ASCII
        (letter(**{H_OFFSET: b"9" * 20}), Skip.MALFORMED),
        (letter(**{H_OFFSET: b"9" * 10**6}), Skip.MALFORMED),
        (letter(**{H_OFFSET: str(2**63).encode()}), Skip.MALFORMED),
        (letter(**{H_OFFSET: b"0x2a"}), Skip.MALFORMED),
        (letter(**{H_OFFSET: b"42\n"}), Skip.MALFORMED),
        (letter() + [(H_TOPIC, b"p-orders")], Skip.MALFORMED),
        (letter() + [(H_OFFSET, b"42")], Skip.MALFORMED),
        (letter() + [(H_ID, b"event-2")], Skip.MALFORMED),
        (letter(**{H_TOPIC: b"q-users"}), Skip.FOREIGN_TOPIC),
        (letter(**{H_TOPIC: b"users"}), Skip.FOREIGN_TOPIC),
        (letter(**{H_TOPIC: b"p-dead-letters"}), Skip.FOREIGN_TOPIC),
        (letter(**{H_TOPIC: b"p-nowhere"}), Skip.FOREIGN_TOPIC),
        (letter(**{H_PARTITION: b"3"}), Skip.OUT_OF_RANGE),
        (letter(**{H_PARTITION: b"9999999999"}), Skip.OUT_OF_RANGE),
    ],
)
def test_a_dead_letter_without_a_usable_reference_is_skipped_for_its_reason(
    headers: KafkaHeaders, reason: str
) -> None:
    assert reference(headers, PREFIX, TOPICS) == reason


def test_with_an_empty_prefix_kafkas_own_topics_are_still_foreign() -> None:
    headers = letter(**{H_TOPIC: b"__consumer_offsets", H_PARTITION: b"0"})

    assert reference(headers, "", TOPICS) == Skip.FOREIGN_TOPIC


@dataclass
class Record:
    value_: bytes | None
    key_: bytes | None
    headers_: KafkaHeaders
    offset_: int
    error_: Any = None

    def value(self) -> bytes | None:
        return self.value_

    def key(self) -> bytes | None:
        return self.key_

    def headers(self) -> KafkaHeaders:
        return self.headers_

    def offset(self) -> int:
        return self.offset_

    def error(self) -> Any:
        return self.error_


@dataclass
class Source:
    """A consumer over one partition holding `records` (by offset), from `low`."""

    records: dict[int, Record]
    low: int = 0
    assigned: list[Any] = field(default_factory=list)

    def get_watermark_offsets(self, position: Any, **_: Any) -> tuple[int, int]:
        return self.low, max(self.records, default=-1) + 1

    def assign(self, positions: list[Any]) -> None:
        self.assigned = positions

    def unassign(self) -> None:
        self.assigned = []

    def poll(self, timeout: float) -> Record | None:
        (position,) = self.assigned
        later = sorted(offset for offset in self.records if offset >= position.offset)
        return replace(self.records[later[0]], offset_=later[0]) if later else None


@dataclass
class Producer:
    sent: list[tuple[str, bytes | None, bytes | None, KafkaHeaders]] = field(default_factory=list)

    def produce_raw(
        self, topic: str, value: bytes | None, key: bytes | None, headers: KafkaHeaders
    ) -> None:
        self.sent.append((topic, value, key, headers))


GENUINE = Record(b'{"issuer": "shop"}', b"shop", [(H_ID, b"event-1"), ("ce_type", b"x")], 42)
REF = Reference("p-users", 1, 42, b"event-1")


def redrive_one(source: Source, ref: Reference = REF) -> tuple[str | None, Producer]:
    producer = Producer()
    outcome = _redrive_one(source, producer, ref, time.monotonic() + 5)  # type: ignore[arg-type]
    return outcome, producer


def test_the_record_re_read_from_its_topic_is_what_is_published() -> None:
    outcome, producer = redrive_one(Source({41: GENUINE, 42: GENUINE, 43: GENUINE}))

    assert outcome is None
    assert producer.sent == [("p-users", GENUINE.value_, GENUINE.key_, GENUINE.headers_)]


def test_a_dead_letter_naming_another_event_at_that_offset_is_skipped() -> None:
    outcome, producer = redrive_one(Source({42: GENUINE}), Reference("p-users", 1, 42, b"forged"))

    assert (outcome, producer.sent) == (Skip.OTHER_EVENT, [])


def test_a_record_without_the_parked_events_id_is_not_that_event() -> None:
    anonymous = Record(b"{}", b"k", [("ce_type", b"x")], 42)
    twice = Record(b"{}", b"k", [(H_ID, b"event-1"), (H_ID, b"event-1")], 42)

    for record in (anonymous, twice):
        outcome, producer = redrive_one(Source({42: record}))
        assert (outcome, producer.sent) == (Skip.OTHER_EVENT, [])


def test_a_record_parked_without_an_id_is_redriven_by_its_position_alone() -> None:
    outcome, producer = redrive_one(Source({42: GENUINE}), Reference("p-users", 1, 42, None))

    assert outcome is None and len(producer.sent) == 1


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        (Source({42: GENUINE}, low=43), Skip.OUT_OF_RANGE),  # no longer retained
        (Source({40: GENUINE}), Skip.OUT_OF_RANGE),  # not written yet
        (Source({41: GENUINE, 43: GENUINE}), Skip.GONE),  # nothing at 42 itself
        (
            Source({42: Record(None, None, [], 42, KafkaError(KafkaError._AUTO_OFFSET_RESET))}),
            Skip.OUT_OF_RANGE,
        ),
    ],
)
def test_a_reference_to_no_record_is_skipped(source: Source, reason: str) -> None:
    outcome, producer = redrive_one(source)

    assert (outcome, producer.sent) == (reason, [])


def test_a_topic_the_redrive_may_not_read_stops_the_run_with_the_brokers_answer() -> None:
    denied = Record(None, None, [], 42, KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))

    with pytest.raises(KafkaException):
        redrive_one(Source({42: denied}))
