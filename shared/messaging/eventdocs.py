"""A readable page of the system's events, rendered from its AsyncAPI document
(`shared.messaging.asyncapi.system_document`): per topic its owner and key, per event its
fields, an example and who consumes it, and the headers every record carries."""

from __future__ import annotations

import json
from typing import Any

from shared.messaging.contracts import GENERATED, Schema


def render(document: Schema) -> str:
    """The Markdown page of `document`."""
    messages: dict[str, Schema] = document["components"]["messages"]
    readers = _readers(document)
    lines = [
        "# Events",
        "",
        f"<!-- {GENERATED} -->",
        "",
        "The services cooperate only through these events on Kafka. A record's value is the",
        "event's JSON payload, its key the payload's key field, its headers CloudEvents 1.0 in",
        "binary mode ([below](#headers)). Each event's JSON Schema is in",
        "`contracts/<topic>/<type>.json`, the whole in AsyncAPI 3.0 in `contracts/asyncapi.json`;",
        "every service serves its own part at `GET /asyncapi.json`.",
        "",
        "| topic | owner | key | events |",
        "|---|---|---|---|",
    ]
    channels: dict[str, Schema] = document["channels"]
    for topic, channel in channels.items():
        types = _types(channel)
        keys = sorted({f"`{messages[t]['x-key']}`" for t in types})
        events = ", ".join(f"[`{t}`](#{t})" for t in types)
        owner = channel.get("x-owner", "?")
        lines.append(f"| [`{topic}`](#{topic}) | {owner} | {', '.join(keys)} | {events} |")
    for topic, channel in channels.items():
        lines += ["", f"## `{topic}`", ""]
        lines.append(f"Owner: **{channel.get('x-owner', '?')}** (no other service writes it).")
        for event_type in _types(channel):
            lines += _event(event_type, messages[event_type], readers.get(event_type, []))
    lines += _headers(next(iter(messages.values()))["headers"]) if messages else []
    return "\n".join(lines) + "\n"


def _types(channel: Schema) -> list[str]:
    return [ref["$ref"].rsplit("/", 1)[-1] for ref in channel["messages"].values()]


def _readers(document: Schema) -> dict[str, list[tuple[str, list[str]]]]:
    """Per event type: each consuming service and the fields it reads."""
    found: dict[str, list[tuple[str, list[str]]]] = {}
    for operation in document["operations"].values():
        if operation["action"] != "receive":
            continue
        event_type = operation["messages"][0]["$ref"].rsplit("/", 1)[-1]
        service = operation["tags"][0]["name"]
        found.setdefault(event_type, []).append((service, operation.get("x-reads", [])))
    return found


def _event(event_type: str, message: Schema, readers: list[tuple[str, list[str]]]) -> list[str]:
    payload = message["payload"]
    lines = ["", f"### `{event_type}`", ""]
    if message.get("summary"):
        lines += [message["summary"], ""]
    lines.append(f"Key: `{message['x-key']}`. Published by **{message.get('x-publisher', '?')}**.")
    if readers:
        read = "; ".join(
            f"**{name}** (reads {', '.join(f'`{f}`' for f in fields)})" for name, fields in readers
        )
        lines.append(f"Consumed by {read}.")
    else:
        lines.append("Consumed by no service yet.")
    lines += ["", "| field | type | required | description |", "|---|---|---|---|"]
    lines += [f"| {row} |" for row in _rows(payload, "")]
    for example in payload.get("examples", [])[:1]:
        lines += ["", "```json", json.dumps(example, indent=2), "```"]
    return lines


def _rows(node: Schema, prefix: str) -> list[str]:
    rows = []
    required = set(node.get("required", []))
    for name, field in node.get("properties", {}).items():
        path = f"{prefix}{name}"
        described = _cell(field.get("description", ""))
        yes = "yes" if name in required else "no"
        rows.append(f"`{path}` | {_cell(type_text(field))} | {yes} | {described}")
        items = field.get("items", {})
        if "properties" in field:
            rows += _rows(field, f"{path}.")
        elif "properties" in items:
            rows += _rows(items, f"{path}[].")
    return rows


def type_text(node: Schema) -> str:
    """A short reading of a schema: `string, 1–64 characters`, `array of object`."""
    branches = node.get("anyOf") or node.get("oneOf")
    if branches:
        return " or ".join(type_text(branch) for branch in branches)
    kind = node.get("type", "any")
    if "const" in node:
        return f"{kind} `{json.dumps(node['const'])}`"
    parts = [str(kind)]
    if "enum" in node:
        parts.append("one of " + ", ".join(f"`{json.dumps(v)}`" for v in node["enum"]))
    if kind == "array":
        parts = [f"array of {type_text(node.get('items', {}))}"]
    parts += _limits(node)
    if "format" in node:
        parts.append(f"format `{node['format']}`")
    if "pattern" in node:
        parts.append(f"pattern `{node['pattern']}`")
    return ", ".join(parts)


def _limits(node: Schema) -> list[str]:
    found = []
    for low, high, unit in (
        ("minLength", "maxLength", "character"),
        ("minItems", "maxItems", "item"),
    ):
        if low in node and high in node:
            found.append(f"{node[low]}–{node[high]} {unit}s")
        elif low in node:
            found.append(f"at least {node[low]} {unit}{'s' * (node[low] != 1)}")
        elif high in node:
            found.append(f"at most {node[high]} {unit}{'s' * (node[high] != 1)}")
    for keyword, sign in (
        ("minimum", "≥"),
        ("exclusiveMinimum", ">"),
        ("maximum", "≤"),
        ("exclusiveMaximum", "<"),
    ):
        if keyword in node:
            found.append(f"{sign} {node[keyword]}")
    return found


def _headers(schema: Schema) -> list[str]:
    required = set(schema.get("required", []))
    lines = ["", "## Headers", ""]
    lines.append("Records carry these Kafka headers, as UTF-8 text. A consumer dead-letters a")
    lines.append("record without a required one; the producers also always set `ce_time` and")
    lines.append("`content-type`.")
    lines += ["", "| header | required | description |", "|---|---|---|"]
    for name, header in schema["properties"].items():
        described = header.get("description", "")
        if name not in ("ce_type", "ce_source") and "const" in header:
            described += f" Always `{header['const']}`."
        yes = "yes" if name in required else "no"
        lines.append(f"| `{name}` | {yes} | {_cell(described)} |")
    return lines


def _cell(text: Any) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")
