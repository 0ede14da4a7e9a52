"""The contract checker itself: `compat.problems` finds a consumer that asks for more than
its publisher promises, and lets one that asks for less through."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.messaging import compat
from shared.messaging.contracts import Contract, accepted_schema, payload
from shared.messaging.events import Event
from tests.json_strategies import from_schema

pytestmark = pytest.mark.unit


class Line(BaseModel):
    product_id: str
    quantity: int = Field(ge=1)


class Sent(Event, type="thing-happened", topic="things", key="thing_id"):
    thing_id: str
    note: str | None = None
    lines: list[Line]
    version: int = 1


def found(consumer: type[Event]) -> list[str]:
    contract = Contract("publisher", Sent).schema()
    return [f"{p.kind} {p}" for p in compat.problems(accepted_schema(consumer), contract)]


def test_a_consumer_reading_less_than_is_sent_has_no_problems() -> None:
    class Reads(Event, type="thing-happened", topic="things", key="thing_id"):
        thing_id: str
        version: int = 0

    assert found(Reads) == []


def test_a_field_with_a_default_is_always_sent_so_a_consumer_may_require_it() -> None:
    class Reads(Event, type="thing-happened", topic="things", key="thing_id"):
        thing_id: str
        version: int

    assert found(Reads) == []


def test_a_bound_the_publisher_does_not_keep_is_reported() -> None:
    class Reads(Event, type="thing-happened", topic="things", key="thing_id"):
        thing_id: str = Field(max_length=64)

    assert found(Reads) == ["stricter thing_id: consumer maxLength 64, publisher maxLength none"]


def test_an_exclusive_integer_bound_equal_to_the_publishers_inclusive_one_is_no_stricter() -> None:
    class ReadLine(BaseModel):
        quantity: int = Field(gt=0)

    class Reads(Event, type="thing-happened", topic="things", key="thing_id"):
        thing_id: str
        lines: list[ReadLine] = Field(default_factory=list)

    assert found(Reads) == []


def test_nested_bounds_types_and_optional_fields_are_compared() -> None:
    class ReadLine(BaseModel):
        product_id: int
        quantity: int = Field(ge=2)

    class Reads(Event, type="thing-happened", topic="things", key="thing_id"):
        thing_id: str
        note: str
        lines: list[ReadLine] = Field(min_length=1)
        missing: str

    assert found(Reads) == [
        "stricter lines: consumer minItems 1, publisher minItems none",
        "type lines[].product_id: publisher may send string, consumer takes integer",
        "stricter lines[].quantity: consumer >= 2, publisher >= 1",
        "missing missing: consumer requires it, publisher does not send it",
        "type note: publisher may send null, consumer takes string",
    ]


def test_enums_constants_and_forbidden_extras_are_compared() -> None:
    class Reads(Event, type="thing-happened", topic="things", key="thing_id"):
        model_config = ConfigDict(extra="forbid")
        thing_id: str = Field(pattern="^t-")
        version: int = Field(1, json_schema_extra={"enum": [1, 2]})

    assert sorted(line.split(":")[0] for line in found(Reads)) == [
        "stricter (payload)",
        "stricter thing_id",
        "stricter version",
    ]


def test_generated_payloads_find_what_compat_reports() -> None:
    """The same stricter consumer, caught at run time by payloads from the contract."""

    class Reads(Event, type="thing-happened", topic="things", key="thing_id"):
        thing_id: str = Field(max_length=4)

    rejected: list[str] = []

    @settings(
        max_examples=60, database=None, derandomize=True, suppress_health_check=list(HealthCheck)
    )
    @given(from_schema(payload(Contract("publisher", Sent).schema())))
    def feed(sent: object) -> None:
        try:
            Reads.model_validate_json(json.dumps(sent))
        except ValidationError:
            rejected.append(json.dumps(sent))

    feed()
    assert rejected, "hypothesis never sent a thing_id longer than 4 characters"
