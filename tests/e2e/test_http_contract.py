"""Bad input over HTTP: every operation of every service's OpenAPI, fuzzed by schemathesis
against the running processes, answers without a server error, with a documented status,
content type and body. Plus the size limits, asked for explicitly."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import BaseSchema, Case, CheckFunction
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.e2e.conftest import RunningStack
from tests.helpers import unique

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SERVICES = ["order", "inventory", "product", "user"]
CHECKS: list[CheckFunction] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
LIMIT = 64 * 1024
"""The services' default `max_body_bytes`."""
MAX_ITEMS = 100
"""The most lines an order may have (services.order.schemas.MAX_ITEMS)."""
SEED = 20240611


def load_schema(running: RunningStack, service: str) -> BaseSchema:
    """The OpenAPI a running service serves, seeded, without the multi-step stateful phase."""
    config = schemathesis.Config.from_dict(
        {"seed": SEED, "phases": {"stateful": {"enabled": False}}}
    )
    url = running.stack.services[service].url
    return schemathesis.openapi.from_url(f"{url}/openapi.json", config=config)


@pytest.fixture(params=SERVICES)
def service_schema(request: pytest.FixtureRequest, running: RunningStack) -> BaseSchema:
    return load_schema(running, request.param)


served = schemathesis.pytest.from_fixture("service_schema")


@pytest.fixture(autouse=True)
def _shim(request):
    request.node._nodeid = request.node.nodeid


@served.parametrize()
@settings(
    max_examples=40,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_answers_generated_input_as_documented(case: Case) -> None:
    case.call_and_validate(checks=CHECKS)


@pytest.fixture
def order_schema(running: RunningStack) -> BaseSchema:
    return load_schema(running, "order")


BODY_ROUTES = [
    ("order", "POST", "/orders"),
    ("inventory", "PUT", "/stock/{id}"),
    ("product", "POST", "/products"),
    ("user", "POST", "/users"),
]


@pytest.mark.parametrize(("service", "method", "path"), BODY_ROUTES)
def test_a_body_over_the_limit_is_answered_413_with_a_json_detail(
    running: RunningStack, service: str, method: str, path: str
) -> None:
    body = json.dumps({"name": "x" * (LIMIT + 1)})
    url = running.stack.services[service].url + path.format(id=unique("p"))
    response = running.client.http.request(
        method, url, content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/json"
    assert str(LIMIT) in response.json()["detail"]


def test_an_order_of_101_items_is_answered_422_naming_the_limit(running: RunningStack) -> None:
    items = [{"product_id": unique("p"), "quantity": 1} for _ in range(MAX_ITEMS + 1)]
    response = running.client.place_order(unique("u"), items)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "items"]
    assert error["ctx"]["max_length"] == MAX_ITEMS
    assert str(MAX_ITEMS) in error["msg"]


def test_a_streamed_body_without_content_length_over_the_limit_is_answered_413(
    running: RunningStack,
) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"user_id": "'
        for _ in range(LIMIT // 4096 + 2):
            yield b"x" * 4096
        yield b'", "items": []}'

    request = running.client.http.build_request(
        "POST",
        running.stack.services["order"].url + "/orders",
        content=chunks(),
        headers={"content-type": "application/json"},
    )
    assert "content-length" not in request.headers
    assert request.headers["transfer-encoding"] == "chunked"
    response = running.client.http.send(request)
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/json"
    assert str(LIMIT) in response.json()["detail"]
