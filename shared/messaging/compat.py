"""Whether a consumer's model of an event accepts everything its publisher may send.

`problems(consumer, publisher)` compares two JSON Schemas, the consumer's (what its model
accepts) and the publisher's contract (what it promises), and lists where the consumer
asks for more: a field it requires that the publisher may leave out, a type the publisher
does not promise, or a bound the publisher does not keep (a `maxLength` of 64 on a field
the publisher leaves unbounded). It covers what pydantic emits: objects, arrays, scalars,
`anyOf` (optional values), local `$ref`, `enum` and `const`."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from shared.messaging.contracts import Schema, resolve

MISSING = "missing"
"""The consumer requires a field the publisher may leave out."""
TYPE = "type"
"""The publisher may send a value of a type the consumer does not accept."""
STRICTER = "stricter"
"""The consumer bounds a value more tightly than the publisher does."""


@dataclass(frozen=True)
class Problem:
    path: str
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.path or '(payload)'}: {self.detail}"


def problems(consumer: Schema, publisher: Schema) -> list[Problem]:
    """Where `consumer` rejects something `publisher` allows; empty when it accepts all."""
    return _Comparison(consumer, publisher).node(consumer, publisher, "")


class _Comparison:
    def __init__(self, consumer: Schema, publisher: Schema) -> None:
        self.consumer_root, self.publisher_root = consumer, publisher

    def node(self, consumer: Schema, publisher: Schema, path: str) -> list[Problem]:
        accepted = _alternatives(consumer, self.consumer_root)
        found: list[Problem] = []
        for sent in _alternatives(publisher, self.publisher_root):
            fitting = [alt for alt in accepted if _fits(alt, sent)]
            if not fitting:
                wanted = " or ".join(_type(alt) or "anything" for alt in accepted)
                detail = f"publisher may send {_type(sent) or 'anything'}, consumer takes {wanted}"
                found.append(Problem(path, TYPE, detail))
                continue
            fewest: list[Problem] = min((self.one(alt, sent, path) for alt in fitting), key=len)
            found.extend(fewest)
        return found

    def one(self, consumer: Schema, publisher: Schema, path: str) -> list[Problem]:
        found = _bounds(consumer, publisher, path)
        kind = _type(publisher)
        if kind == "object":
            found += self.fields(consumer, publisher, path)
        elif kind == "array" and "items" in consumer:
            items = publisher.get("items", {})
            found += self.node(consumer["items"], items, f"{path}[]")
        return found

    def fields(self, consumer: Schema, publisher: Schema, path: str) -> list[Problem]:
        found: list[Problem] = []
        sent: dict[str, Schema] = publisher.get("properties", {})
        always = set(publisher.get("required", []))
        read: dict[str, Schema] = consumer.get("properties", {})
        for name in sorted({*read, *consumer.get("required", [])}):
            where = f"{path}.{name}" if path else name
            if name in consumer.get("required", []) and name not in always:
                said = "may leave it out" if name in sent else "does not send it"
                found.append(Problem(where, MISSING, f"consumer requires it, publisher {said}"))
            if name in sent and name in read:
                found += self.node(read[name], sent[name], where)
        extra = consumer.get("additionalProperties", True)
        if extra is False and set(sent) - set(read):
            unknown = ", ".join(sorted(set(sent) - set(read)))
            found.append(Problem(path, STRICTER, f"consumer forbids fields sent: {unknown}"))
        elif isinstance(extra, dict):
            for name in sorted(set(sent) - set(read)):
                found += self.node(extra, sent[name], f"{path}.{name}" if path else name)
            if isinstance(publisher.get("additionalProperties"), dict):
                found += self.node(extra, publisher["additionalProperties"], f"{path}.*")
        return found


def _alternatives(node: Schema, root: Schema) -> list[Schema]:
    """The schemas a value may match: the branches of `anyOf`/`oneOf`, or `node` itself."""
    node = resolve(node, root)
    branches = node.get("anyOf") or node.get("oneOf")
    if branches and "type" not in node:
        return [alt for branch in branches for alt in _alternatives(branch, root)]
    if isinstance(node.get("type"), list):
        return [{**node, "type": kind} for kind in node["type"]]
    return [node]


_JSON_TYPES = {
    str: "string",
    bool: "boolean",
    int: "integer",
    float: "number",
    list: "array",
    dict: "object",
    type(None): "null",
}


def _type(node: Schema) -> str | None:
    """The JSON type `node` allows, or None for any."""
    if "type" in node:
        return str(node["type"])
    values = _values(node)
    if values:
        kinds = {_JSON_TYPES[type(value)] for value in values}
        return kinds.pop() if len(kinds) == 1 else None
    return "object" if "properties" in node else None


def _fits(consumer: Schema, publisher: Schema) -> bool:
    wanted, sent = _type(consumer), _type(publisher)
    return wanted is None or wanted == sent or (wanted, sent) == ("number", "integer")


def _values(node: Schema) -> list[Any] | None:
    if "const" in node:
        return [node["const"]]
    return list(node["enum"]) if "enum" in node else None


def _bounds(consumer: Schema, publisher: Schema, path: str) -> list[Problem]:
    """The bounds of `consumer` that `publisher` does not keep."""
    found = []

    def stricter(detail: str) -> None:
        found.append(Problem(path, STRICTER, detail))

    integer = _type(publisher) == "integer"
    for side in ("minimum", "maximum"):
        wanted, sent = _limit(consumer, side, integer), _limit(publisher, side, integer)
        if wanted is not None and (sent is None or _tighter(wanted, sent, side)):
            stricter(f"consumer {_says(wanted, side)}, publisher {_says(sent, side)}")
    for low, high in (("minLength", "maxLength"), ("minItems", "maxItems")):
        wanted_low, sent_low = consumer.get(low), publisher.get(low)
        if wanted_low is not None and wanted_low > (sent_low or 0):
            stricter(f"consumer {low} {wanted_low}, publisher {low} {sent_low or 'none'}")
        wanted_high, sent_high = consumer.get(high), publisher.get(high)
        if wanted_high is not None and (sent_high is None or wanted_high < sent_high):
            stricter(f"consumer {high} {wanted_high}, publisher {high} {sent_high or 'none'}")
    for keyword in ("pattern", "format"):
        if keyword in consumer and consumer[keyword] != publisher.get(keyword):
            stricter(
                f"consumer {keyword} {consumer[keyword]!r}, publisher {publisher.get(keyword)!r}"
            )
    step = consumer.get("multipleOf")
    if step is not None and publisher.get("multipleOf", 0) % step:
        stricter(f"consumer multipleOf {step}, publisher {publisher.get('multipleOf')}")
    wanted_values, sent_values = _values(consumer), _values(publisher)
    if wanted_values is not None:
        accepted = {json.dumps(value, sort_keys=True) for value in wanted_values}
        sent_keys = (
            None if sent_values is None else [json.dumps(v, sort_keys=True) for v in sent_values]
        )
        if sent_keys is None or not set(sent_keys) <= accepted:
            rest = (
                "any value" if sent_keys is None else ", ".join(sorted(set(sent_keys) - accepted))
            )
            stricter(f"consumer accepts only {', '.join(sorted(accepted))}; publisher sends {rest}")
    if consumer.get("uniqueItems") and not publisher.get("uniqueItems"):
        stricter("consumer requires unique items, publisher does not promise them")
    return found


Limit = tuple[float, bool]
"""A numeric bound and whether it is exclusive."""


def _limit(node: Schema, side: str, integer: bool) -> Limit | None:
    """The tightest `minimum`/`exclusiveMinimum` (or maximum) of `node`; on integers an
    exclusive bound is the inclusive one next to it (`gt=0` is `ge=1`)."""
    low = side == "minimum"
    found: list[Limit] = []
    if side in node:
        found.append((node[side], False))
    exclusive = "exclusive" + side.capitalize()
    if exclusive in node:
        found.append((node[exclusive], True))
    if integer:
        found = [
            (
                (math.floor(v) + 1 if x else math.ceil(v))
                if low
                else (math.ceil(v) - 1 if x else math.floor(v)),
                False,
            )
            for v, x in found
        ]
    if not found:
        return None
    return max(found) if low else min(found, key=lambda limit: (limit[0], not limit[1]))


def _tighter(wanted: Limit, sent: Limit, side: str) -> bool:
    (w, w_exclusive), (s, s_exclusive) = wanted, sent
    if w != s:
        return w > s if side == "minimum" else w < s
    return w_exclusive and not s_exclusive


def _says(limit: Limit | None, side: str) -> str:
    if limit is None:
        return f"no {side}"
    value, exclusive = limit
    sign = (">" if exclusive else ">=") if side == "minimum" else ("<" if exclusive else "<=")
    return f"{sign} {value:g}"
