"""AsyncAPI 3.0: each service serves its document at `GET /asyncapi.json` without starting
its runtime (no database, no broker), the system's document is committed in
`contracts/asyncapi.json`, and both are valid against the official AsyncAPI 3.0.0 schema
(vendored in tests/schemas) and agree with the specs and the committed contracts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from services import registry
from shared.messaging import contracts
from shared.messaging.envelope import REQUIRED_HEADERS
from shared.runtime.service import ServiceSpec
from tools.dev.contracts import ASYNCAPI, CONTRACTS, ROOT, specs

pytestmark = pytest.mark.unit

OFFICIAL = Path(__file__).parent.parent / "schemas" / "asyncapi-3.0.0.json"
BOOTSTRAP = "broker-1:9092,broker-2:9092"
PREFIX = "t7-"
SPECS = {spec.name: spec for spec in specs()}


@pytest.fixture(scope="module")
def official() -> Any:
    return jsonschema_rs.validator_for(json.loads(OFFICIAL.read_text()))


def assert_valid(validator: Any, document: dict[str, Any]) -> None:
    errors = [
        f"{list(e.instance_path)}: {e.message[:300]}" for e in validator.iter_errors(document)
    ]
    assert not errors, "not valid AsyncAPI 3.0.0:\n" + "\n".join(errors)


def app_of(name: str) -> FastAPI:
    service = registry.get(name)
    settings = registry.load(service.settings)
    app: FastAPI = registry.load(service.app)(
        settings(kafka_bootstrap_servers=BOOTSTRAP, topic_prefix=PREFIX, topic_partitions=5)
    )
    return app


@pytest.fixture(scope="module", params=registry.names())
def served(request: pytest.FixtureRequest) -> tuple[ServiceSpec, FastAPI, dict[str, Any]]:
    app = app_of(request.param)
    response = TestClient(app).get("/asyncapi.json")  # no `with`: the lifespan never runs
    assert response.status_code == 200, response.text
    return SPECS[request.param], app, response.json()


def committed(topic: str, event_type: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(
        (ROOT / CONTRACTS / topic / f"{event_type}.json").read_text()
    )
    return schema


def test_a_service_serves_valid_asyncapi_without_its_runtime(
    served: tuple[ServiceSpec, FastAPI, dict[str, Any]], official: Any
) -> None:
    spec, app, document = served
    assert not hasattr(app.state, "runtime")
    assert_valid(official, document)
    assert document["asyncapi"] == "3.0.0"
    assert document["info"]["title"] == app.title
    assert document["servers"]["kafka"] == {**document["servers"]["kafka"], "host": BOOTSTRAP}
    assert "/asyncapi.json" not in app.openapi()["paths"]


def test_channels_and_operations_follow_the_spec(
    served: tuple[ServiceSpec, FastAPI, dict[str, Any]],
) -> None:
    spec, _, document = served
    channels, operations = document["channels"], document["operations"]
    assert set(channels) == {*spec.owns, *spec.subscribes}
    for topic, channel in channels.items():
        assert channel["address"] == PREFIX + topic
        assert channel["bindings"]["kafka"]["partitions"] == 5
    wanted = {f"send-{model.event_type}": model for model in spec.publishes}
    wanted |= {f"receive-{t}": route.model for t, route in spec.router.routes.items()}
    assert set(operations) == set(wanted)
    for name, model in wanted.items():
        operation = operations[name]
        assert operation["action"] == name.split("-", 1)[0]
        assert operation["channel"] == {"$ref": f"#/channels/{model.topic}"}
        (message,) = operation["messages"]
        assert message == {"$ref": f"#/channels/{model.topic}/messages/{model.event_type}"}
        assert model.event_type in channels[model.topic]["messages"]


def test_a_sent_message_carries_the_committed_contract(
    served: tuple[ServiceSpec, FastAPI, dict[str, Any]],
) -> None:
    spec, _, document = served
    for model in spec.publishes:
        message = document["components"]["messages"][model.event_type]
        assert message["payload"] == contracts.payload(committed(model.topic, model.event_type))
        assert message["x-publisher"] == spec.name
        headers = message["headers"]
        assert headers["required"] == list(REQUIRED_HEADERS)
        assert headers["properties"]["ce_type"]["const"] == model.event_type
        assert headers["properties"]["ce_source"]["const"] == f"/services/{spec.name}"
        key = message["bindings"]["kafka"]["key"]
        assert key["type"] == "string" and model.key_field in key["description"]


def test_a_received_message_carries_the_consumers_own_model(
    served: tuple[ServiceSpec, FastAPI, dict[str, Any]],
) -> None:
    spec, _, document = served
    sent = {model.event_type for model in spec.publishes}
    for event_type, route in spec.router.routes.items():
        if event_type in sent:
            continue
        message = document["components"]["messages"][event_type]
        assert message["payload"] == contracts.inline(contracts.accepted_schema(route.model))
        assert "const" not in message["headers"]["properties"]["ce_source"]


def test_the_system_document_is_valid_asyncapi_with_each_channel_once(official: Any) -> None:
    document = json.loads((ROOT / ASYNCAPI).read_text())
    assert_valid(official, document)
    owners = {model.topic: spec.name for spec in SPECS.values() for model in spec.publishes}
    assert {topic: channel["x-owner"] for topic, channel in document["channels"].items()} == owners
    wanted = {
        f"{spec.name}.send.{model.event_type}"
        for spec in SPECS.values()
        for model in spec.publishes
    }
    wanted |= {f"{spec.name}.receive.{t}" for spec in SPECS.values() for t in spec.router.routes}
    assert set(document["operations"]) == wanted
    topics = {model.event_type: model.topic for spec in SPECS.values() for model in spec.publishes}
    assert set(document["components"]["messages"]) == set(topics)
    for name, message in document["components"]["messages"].items():
        assert message["payload"] == contracts.payload(committed(topics[name], name))
