"""Hypothesis strategies for the JSON values a JSON Schema allows, for the part of JSON
Schema that pydantic models emit: `type`, `properties`/`required`, `additionalProperties`
(a map's values), `items`, `anyOf`, `const`, `enum`, length, item-count and numeric
bounds, `pattern`, `format: date-time`. Anything else raises, so a schema is never fuzzed
as something looser than it says.

(hypothesis-jsonschema would do this, but it is not installed here and its release 0.23.1
fails against the pinned hypothesis: `'many' object has no attribute 'more'`.)"""

from __future__ import annotations

import math
from datetime import timedelta, timezone
from typing import Any

from hypothesis import strategies as st

Schema = dict[str, Any]

_IGNORED = {"title", "description", "examples", "default", "$comment"}
_KNOWN = {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "anyOf",
    "oneOf",
    "const",
    "enum",
    "minLength",
    "maxLength",
    "pattern",
    "format",
    "minItems",
    "maxItems",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
}


def from_schema(schema: Schema) -> st.SearchStrategy[Any]:
    """Values valid against `schema` (a schema without `$ref`: see contracts.inline)."""
    unknown = set(schema) - _KNOWN - _IGNORED
    if unknown:
        raise NotImplementedError(f"cannot generate for {sorted(unknown)} in {schema}")
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    branches = schema.get("anyOf") or schema.get("oneOf")
    if branches:
        return st.one_of([from_schema(branch) for branch in branches])
    kind = schema.get("type")
    if kind == "object":
        return _object(schema)
    if kind == "array":
        items = from_schema(schema.get("items", {}))
        return st.lists(items, min_size=schema.get("minItems", 0), max_size=schema.get("maxItems"))
    if kind == "string":
        if "format" in schema:
            return _formatted(schema)
        if "pattern" in schema:
            pattern: str = schema["pattern"]
            # anchored at both ends: the whole string (Python's `$` would let a newline follow)
            whole = pattern.startswith("^") and pattern.endswith("$") and pattern[-2:] != "\\$"
            return st.from_regex(pattern, fullmatch=whole).filter(
                lambda text: _fits_length(text, schema)
            )
        return st.text(min_size=schema.get("minLength", 0), max_size=schema.get("maxLength"))
    if kind == "integer":
        low, high = _bounds(schema)
        return st.integers(
            None if low is None else math.ceil(low), None if high is None else math.floor(high)
        )
    if kind == "number":
        low, high = _bounds(schema)
        return st.floats(low, high, allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind is None and set(schema) <= _IGNORED:
        return st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(),
            lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
            max_leaves=5,
        )
    raise NotImplementedError(f"cannot generate for {schema}")


def _object(schema: Schema) -> st.SearchStrategy[dict[str, Any]]:
    extra = schema.get("additionalProperties")
    if extra not in (None, False) and not isinstance(extra, dict):
        raise NotImplementedError(f"additionalProperties: {extra}")
    properties: dict[str, Schema] = schema.get("properties", {})
    required = set(schema.get("required", []))
    named = st.fixed_dictionaries(
        {name: from_schema(properties[name]) for name in properties if name in required},
        optional={
            name: from_schema(properties[name]) for name in properties if name not in required
        },
    )
    if not isinstance(extra, dict):
        return named
    # A map (`dict[str, str]`): other names, each with a value of the given schema.
    others = st.dictionaries(
        st.text().filter(lambda name: name not in properties), from_schema(extra), max_size=6
    )
    return st.tuples(others, named).map(lambda both: {**both[0], **both[1]})


def _formatted(schema: Schema) -> st.SearchStrategy[str]:
    """Strings of a `format` pydantic emits and parses: only `date-time` (RFC 3339) so far."""
    if schema["format"] != "date-time" or set(schema) & {"pattern", "minLength", "maxLength"}:
        raise NotImplementedError(f"cannot generate for {schema}")
    offsets = st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(
        lambda minutes: timezone(timedelta(minutes=minutes))
    )
    return st.datetimes(timezones=offsets).map(
        lambda moment: moment.isoformat().replace("+00:00", "Z")
    )


def _bounds(schema: Schema) -> tuple[float | None, float | None]:
    """The tightest inclusive bounds; an exclusive one becomes the next value inside."""
    integer = schema.get("type") == "integer"
    lows, highs = [], []
    if "minimum" in schema:
        lows.append(schema["minimum"])
    if "exclusiveMinimum" in schema:
        value = schema["exclusiveMinimum"]
        lows.append(math.floor(value) + 1 if integer else math.nextafter(value, math.inf))
    if "maximum" in schema:
        highs.append(schema["maximum"])
    if "exclusiveMaximum" in schema:
        value = schema["exclusiveMaximum"]
        highs.append(math.ceil(value) - 1 if integer else math.nextafter(value, -math.inf))
    return (max(lows) if lows else None), (min(highs) if highs else None)


def _fits_length(text: str, schema: Schema) -> bool:
    return bool(schema.get("minLength", 0) <= len(text) <= schema.get("maxLength", math.inf))
