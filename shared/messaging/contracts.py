"""Event contracts as data: the JSON Schema of each event, generated from the model of the
one service that publishes it, kept in git as `contracts/<topic>/<type>.json`.

A consumer keeps its own model of an event (only the fields it reads); a test checks
that model against the committed contract (`shared.messaging.compat`), so the copies
cannot drift. `python -m tools.dev.contracts` writes the files; `--check` says what is stale."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic.json_schema import GenerateJsonSchema
from pydantic_core import core_schema

from shared.messaging.events import Event
from shared.messaging.router import EventRouter

Schema = dict[str, Any]

DIALECT = "https://json-schema.org/draft/2020-12/schema"
REGENERATE = "python -m tools.dev.contracts"
GENERATED = f"Generated from the publisher's model by `{REGENERATE}`: do not edit."


class Participant(Protocol):
    """What the contracts need of a service; a `ServiceSpec` is one."""

    @property
    def name(self) -> str: ...
    @property
    def router(self) -> EventRouter: ...
    @property
    def publishes(self) -> Sequence[type[Event]]: ...


class ContractError(ValueError):
    """The services' events do not make one consistent contract."""


class _AsSent(GenerateJsonSchema):
    """The schema of what a model dumps: every field is present, defaults included."""

    def field_is_required(
        self,
        field: core_schema.ModelField | core_schema.DataclassField | core_schema.TypedDictField,
        total: bool,
    ) -> bool:
        if self.mode == "serialization":
            return field.get("serialization_exclude_if") is None
        return super().field_is_required(field, total)


def sent_schema(model: type[Event]) -> Schema:
    """The JSON Schema of the payload a publisher's `model` puts on the wire."""
    return model.model_json_schema(mode="serialization", schema_generator=_AsSent)


def accepted_schema(model: type[Event]) -> Schema:
    """The JSON Schema of the payloads a consumer's `model` accepts."""
    return model.model_json_schema(mode="validation")


@dataclass(frozen=True)
class Contract:
    """One event type, as its publisher promises it."""

    publisher: str
    model: type[Event]

    @property
    def event_type(self) -> str:
        return self.model.event_type

    @property
    def path(self) -> str:
        """Where it lives, under `contracts/`."""
        return f"{self.model.topic}/{self.model.event_type}.json"

    def schema(self) -> Schema:
        return {
            "$schema": DIALECT,
            "$comment": GENERATED,
            **sent_schema(self.model),
            "x-event-type": self.model.event_type,
            "x-topic": self.model.topic,
            "x-key": self.model.key_field,
            "x-publisher": self.publisher,
        }


def publishers(participants: Iterable[Participant]) -> dict[str, list[Contract]]:
    """Every publisher of each event type (one, if the services agree)."""
    found: dict[str, list[Contract]] = {}
    for participant in participants:
        for model in participant.publishes:
            found.setdefault(model.event_type, []).append(Contract(participant.name, model))
    return found


def contracts(participants: Iterable[Participant]) -> list[Contract]:
    """One contract per published event type, in the order the services declare them.

    Raises ContractError when two services publish one type."""
    chosen = []
    for event_type, found in publishers(participants).items():
        if len(found) > 1:
            names = ", ".join(contract.publisher for contract in found)
            raise ContractError(f"{event_type} is published by more than one service: {names}")
        chosen.append(found[0])
    return chosen


def render(document: Any) -> str:
    """JSON as committed: 2-space indent, sorted keys, a newline at the end."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def files(participants: Iterable[Participant]) -> dict[str, str]:
    """The text of every contract file, by its path under `contracts/`."""
    return {contract.path: render(contract.schema()) for contract in contracts(participants)}


def resolve(node: Schema, root: Schema) -> Schema:
    """`node`, or what its local `$ref` (`#/$defs/Name`) points to in `root`."""
    seen = 0
    while "$ref" in node:
        pointer = node["$ref"]
        if not pointer.startswith("#/"):
            raise ContractError(f"only local $ref is supported, not {pointer!r}")
        target: Any = root
        for part in pointer[2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        seen += 1
        if seen > 64:
            raise ContractError(f"$ref cycle at {pointer!r}")
    return node


def inline(schema: Schema) -> Schema:
    """`schema` with every local `$ref` replaced by its target and no `$defs`: a schema
    that means the same wherever it is embedded (an AsyncAPI message's payload, say)."""

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                node = resolve(node, schema)
            return {key: walk(value) for key, value in node.items() if key != "$defs"}
        if isinstance(node, list):
            return [walk(item) for item in node]
        return node

    result: Schema = walk(copy.deepcopy(schema))
    return result


def payload(schema: Schema) -> Schema:
    """A contract as a message payload: inlined, without the file's own metadata (the
    `$schema`, the `$comment` and the `x-` keys, which the message carries otherwise)."""
    return {
        key: value
        for key, value in inline(schema).items()
        if key not in ("$schema", "$comment") and not key.startswith("x-")
    }
