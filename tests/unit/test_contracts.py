"""Consumer-driven contract tests. Each publisher's JSON Schema of its events is committed
in `contracts/` (`python -m tools.dev.contracts` writes it); every consumer's own model of an
event is checked against that file, never against the publisher's Python class:

- the publisher's examples are payloads the consumer accepts;
- a field the consumer requires is one the publisher always sends, with a type it takes;
- no bound of the consumer is tighter than the publisher's (a `max_length=64` on a field
  the publisher leaves unbounded would dead-letter a valid event);
- payloads generated from the schema (hypothesis, tests/json_strategies.py) are accepted.

A failure's id reads `<event type>:<publisher>-><consumer>`. When a publisher's model
changed, regenerate the contracts; when a consumer is stricter than its publisher,
validate on the publisher's side (tighten its model) or loosen the consumer."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import jsonschema_rs
import pytest
from hypothesis import HealthCheck, given, settings
from pydantic import ValidationError

from shared.messaging import compat, contracts
from shared.messaging.events import Event
from tests.json_strategies import from_schema
from tools.dev.contracts import ASYNCAPI, CONTRACTS, ROOT, differences, specs

pytestmark = pytest.mark.unit

REGENERATE = f"run `{contracts.REGENERATE}` (or `make contracts`) and commit the result"
SPECS = specs()


def committed() -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """The committed contracts, by the event type they describe."""
    found: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for file in sorted((ROOT / CONTRACTS).rglob("*.json")):
        path = file.relative_to(ROOT).as_posix()
        if path != ASYNCAPI:
            schema = json.loads(file.read_text())
            found.setdefault(schema.get("x-event-type", path), []).append((path, schema))
    return found


COMMITTED = committed()


@dataclass(frozen=True)
class Reading:
    """One consumer's model of one event type (a route of its router)."""

    consumer: str
    model: type[Event]

    @property
    def event_type(self) -> str:
        return self.model.event_type

    @property
    def publisher(self) -> str:
        found = COMMITTED.get(self.event_type, [])
        return "+".join(schema.get("x-publisher", "?") for _, schema in found) or "nobody"

    def contract(self) -> dict[str, Any]:
        found = COMMITTED.get(self.event_type, [])
        if len(found) != 1:
            pytest.fail(
                f"{self.consumer} consumes {self.event_type}, which has "
                f"{len(found)} contracts in {CONTRACTS}/ ({[path for path, _ in found]}), "
                "not one: every consumed type needs exactly one publisher"
            )
        return found[0][1]

    def problems(self, *kinds: str) -> list[str]:
        consumer = contracts.accepted_schema(self.model)
        found = compat.problems(consumer, self.contract())
        return [str(problem) for problem in found if problem.kind in kinds]

    def __str__(self) -> str:
        return f"{self.event_type}:{self.publisher}->{self.consumer}"


READINGS = [
    Reading(spec.name, route.model) for spec in SPECS for route in spec.router.routes.values()
]
PUBLISHED = [contract for found in contracts.publishers(SPECS).values() for contract in found]
each_reading = pytest.mark.parametrize("reading", READINGS, ids=str)
each_contract = pytest.mark.parametrize(
    "contract", PUBLISHED, ids=lambda c: f"{c.event_type}:{c.publisher}"
)


def test_committed_contracts_match_the_publishers_models() -> None:
    stale = differences()
    if stale:
        pytest.fail("\n".join([*(str(d) for d in stale), "out of date: " + REGENERATE]))


def test_each_event_type_has_exactly_one_publisher() -> None:
    shared = {
        event_type: [contract.publisher for contract in found]
        for event_type, found in contracts.publishers(SPECS).items()
        if len(found) > 1
    }
    assert not shared, f"event types with more than one publisher: {shared}"


@each_contract
def test_a_published_event_has_examples_its_publisher_sends_as_they_are(
    contract: contracts.Contract,
) -> None:
    examples = contract.schema().get("examples", [])
    assert examples, (
        f"{contract.publisher}'s {contract.model.__name__} has no examples: add "
        'model_config = ConfigDict(json_schema_extra={"examples": [...]})'
    )
    for example in examples:
        sent = contract.model.model_validate(example).model_dump(mode="json")
        assert sent == example, f"an example of {contract.event_type} is not what is sent"


@each_reading
def test_a_consumed_type_has_one_publisher(reading: Reading) -> None:
    reading.contract()


@each_reading
def test_a_consumer_reads_the_topic_its_publisher_writes(reading: Reading) -> None:
    topic = reading.contract()["x-topic"]
    assert reading.model.topic == topic, (
        f"{reading.consumer} expects {reading.event_type} on {reading.model.topic!r}, "
        f"its publisher writes it to {topic!r}"
    )


@each_reading
def test_the_publishers_examples_are_accepted_by_the_consumer(reading: Reading) -> None:
    examples = reading.contract().get("examples", [])
    assert examples, f"the contract of {reading.event_type} has no examples"
    for example in examples:
        try:
            reading.model.model_validate_json(json.dumps(example))
        except ValidationError as exc:
            pytest.fail(f"{reading.consumer} rejects an example of {reading}: {exc}")


@each_reading
def test_a_field_the_consumer_requires_is_always_sent_with_a_type_it_takes(
    reading: Reading,
) -> None:
    found = reading.problems(compat.MISSING, compat.TYPE)
    assert not found, f"{reading}:\n" + "\n".join(found)


@each_reading
def test_the_consumers_constraints_are_no_stricter_than_the_publishers(
    reading: Reading,
) -> None:
    found = reading.problems(compat.STRICTER)
    assert not found, (
        f"{reading}: the consumer would dead-letter events its publisher may send:\n"
        + "\n".join(found)
        + "\nvalidate in the publisher's model (and regenerate), or loosen the consumer's"
    )


@each_reading
def test_payloads_generated_from_the_contract_are_accepted(reading: Reading) -> None:
    schema = contracts.payload(reading.contract())
    valid = jsonschema_rs.validator_for(schema)

    @settings(
        max_examples=40,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(from_schema(schema))
    def accepts(payload: Any) -> None:
        assert valid.is_valid(payload), f"the generator broke the schema: {payload}"
        reading.model.model_validate_json(json.dumps(payload))

    accepts()
