"""AsyncAPI 3.0 documents of the services' events, built from their specs.

`service_document` describes one service (its `GET /asyncapi.json`): a channel per topic
it publishes or consumes, a message per event type (payload: the publisher's model for
what it sends, its own model for what it receives), a `send` or `receive` operation per
type. `system_document` describes the whole shop: each channel once, with its publisher's
messages, every publisher's sends and every consumer's receives."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from shared.messaging import envelope as ce
from shared.messaging.contracts import Contract, Participant, Schema, accepted_schema, inline
from shared.messaging.contracts import payload as contract_payload
from shared.messaging.events import Event

ASYNCAPI = "3.0.0"
KAFKA_BINDING = "0.5.0"
TRACEPARENT = "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"
_HEADERS: dict[str, tuple[Schema, str]] = {
    ce.H_SPECVERSION: ({"const": ce.SPEC_VERSION}, "CloudEvents version."),
    ce.H_ID: ({}, "The event's id; a consumer applies one id once."),
    ce.H_TYPE: ({}, "The event type."),
    ce.H_SOURCE: ({}, "`/services/<publisher>`."),
    ce.H_TIME: ({"format": "date-time"}, "When the event was emitted (RFC 3339)."),
    ce.H_CONTENT_TYPE: ({"const": ce.CONTENT_TYPE}, "Media type of the value."),
    ce.H_CORRELATION: ({}, "The saga it belongs to: the order id for an order's events."),
    ce.H_CAUSATION: ({}, "The id of the event, or HTTP request, that caused it."),
    ce.H_TRACEPARENT: ({"pattern": TRACEPARENT}, "W3C trace context of the emitting span."),
    ce.H_TRACESTATE: ({}, "W3C trace state, when the trace has one."),
}


def service_document(
    spec: Participant,
    *,
    title: str,
    version: str,
    bootstrap: str,
    topic_prefix: str = "",
    partitions: int | None = None,
) -> Schema:
    """The AsyncAPI document of one service's events, as it runs with these settings."""
    document = _skeleton(
        title, version, f"The events the {spec.name} service sends and receives.", bootstrap
    )
    sent = {model.event_type for model in spec.publishes}
    for model in spec.publishes:
        contract = Contract(spec.name, model)
        _message(document, model, contract_payload(contract.schema()), spec.name)
        _channel(document, model.topic, topic_prefix, partitions, owner=spec.name)
        _operation(document, f"send-{model.event_type}", "send", model)
    for event_type, route in sorted(spec.router.routes.items()):
        if event_type not in sent:
            _message(document, route.model, inline(accepted_schema(route.model)), None)
        _channel(document, route.model.topic, topic_prefix, partitions, owner=None)
        _operation(document, f"receive-{event_type}", "receive", route.model)
    return document


def system_document(
    specs: Iterable[Participant],
    contracts: Sequence[Contract],
    *,
    title: str,
    version: str,
    bootstrap: str,
) -> Schema:
    """The whole system's document: one channel per topic, every send and every receive
    of a published type (a consumed type without a publisher is left out). The server's
    host is a variable whose default is `bootstrap`."""
    document = _skeleton(title, version, "Every event of the system, on Kafka.", "{bootstrap}")
    document["servers"]["kafka"]["variables"] = {
        "bootstrap": {
            "default": bootstrap,
            "description": "The services' `KAFKA_BOOTSTRAP_SERVERS` setting.",
        }
    }
    published = {contract.event_type: contract for contract in contracts}
    for contract in contracts:
        model = contract.model
        _message(document, model, contract_payload(contract.schema()), contract.publisher)
        _channel(document, model.topic, "", None, owner=contract.publisher)
        _operation(document, f"{contract.publisher}.send.{model.event_type}", "send", model)[
            "tags"
        ] = [{"name": contract.publisher}]
    for spec in specs:
        for event_type, route in sorted(spec.router.routes.items()):
            if event_type not in published:
                continue
            publisher = published[event_type].model
            operation = _operation(
                document, f"{spec.name}.receive.{event_type}", "receive", publisher
            )
            operation["tags"] = [{"name": spec.name}]
            operation["x-reads"] = sorted(route.model.model_fields)
    return document


def headers_schema(event_type: str, source: str | None = None) -> Schema:
    """The CloudEvents binary-mode headers of an event of `event_type` (Kafka header
    values are UTF-8 text); `source`, when known, is the only `ce_source` it has."""
    properties: dict[str, Schema] = {}
    for name, (constraints, description) in _HEADERS.items():
        properties[name] = {"type": "string", **constraints, "description": description}
    properties[ce.H_TYPE]["const"] = event_type
    if source is not None:
        properties[ce.H_SOURCE]["const"] = source
    return {"type": "object", "required": list(ce.REQUIRED_HEADERS), "properties": properties}


def _skeleton(title: str, version: str, description: str, bootstrap: str) -> Schema:
    return {
        "asyncapi": ASYNCAPI,
        "info": {"title": title, "version": version, "description": description},
        "defaultContentType": ce.CONTENT_TYPE,
        "servers": {
            "kafka": {
                "host": bootstrap,
                "protocol": "kafka",
                "description": "Kafka bootstrap servers (comma-separated `host:port`).",
            }
        },
        "channels": {},
        "operations": {},
        "components": {"messages": {}},
    }


def _message(document: Schema, model: type[Event], payload: Schema, publisher: str | None) -> None:
    """Add `model`'s message under components; `publisher` names the sender, if known."""
    key = dict(payload.get("properties", {}).get(model.key_field, {"type": "string"}))
    key.pop("title", None)
    key["description"] = (
        f"The payload's `{model.key_field}`: events of one value share a partition, in order."
    )
    message: Schema = {
        "name": model.event_type,
        "title": model.__name__,
        "contentType": ce.CONTENT_TYPE,
        "headers": headers_schema(
            model.event_type, f"/services/{publisher}" if publisher else None
        ),
        "payload": payload,
        "correlationId": {"location": f"$message.header#/{ce.H_CORRELATION}"},
        "bindings": {"kafka": {"key": key, "bindingVersion": KAFKA_BINDING}},
        "x-key": model.key_field,
    }
    if model.__doc__:
        message["summary"] = " ".join(model.__doc__.split())
    if publisher:
        message["x-publisher"] = publisher
    examples = payload.get("examples", [])
    if examples:
        message["examples"] = [
            {"name": f"{model.event_type}-{i}", "payload": example}
            for i, example in enumerate(examples, 1)
        ]
    document["components"]["messages"][model.event_type] = message


def _channel(
    document: Schema, topic: str, prefix: str, partitions: int | None, *, owner: str | None
) -> None:
    channel = document["channels"].setdefault(
        topic,
        {
            "address": prefix + topic,
            "messages": {},
            "bindings": {"kafka": {"topic": prefix + topic, "bindingVersion": KAFKA_BINDING}},
        },
    )
    if partitions is not None:
        channel["bindings"]["kafka"]["partitions"] = partitions
    if owner is not None:
        channel["x-owner"] = owner
        channel["description"] = f"Written by the {owner} service only."


def _operation(document: Schema, name: str, action: str, model: type[Event]) -> Schema:
    """Add the `action` of `model`'s messages on its channel; return the operation."""
    channel = document["channels"][model.topic]
    channel["messages"][model.event_type] = {"$ref": f"#/components/messages/{model.event_type}"}
    operation: Schema = {
        "action": action,
        "channel": {"$ref": f"#/channels/{model.topic}"},
        "messages": [{"$ref": f"#/channels/{model.topic}/messages/{model.event_type}"}],
        "summary": f"{action.capitalize()} `{model.event_type}` on `{channel['address']}`.",
    }
    document["operations"][name] = operation
    return operation
