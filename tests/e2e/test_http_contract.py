"""Bad input over HTTP. Schemathesis fuzzes every operation of the OpenAPI each running
service serves, signed in (a customer's token for order and user, the operator's for
inventory and product), and every answer must be one the operation documents: no server
error, a documented status code and content type, a body matching the documented schema.
The size limits are asked for explicitly, and their answers checked against the same
contract."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
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
from tests.helpers import random_email, unique
from tools.ops.client import ShopClient

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SERVICES = ["order", "inventory", "product", "user"]
CHECKS: list[CheckFunction] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
SEED = 20_240_611
MAX_EXAMPLES = 50
"""Per operation, for the fuzzing phase; the examples and coverage phases add their own."""
LIMIT = 64 * 1024
"""The services' default `max_body_bytes`."""
MAX_ITEMS = 100
"""The most lines an order may have."""


@pytest.fixture(scope="session")
def customer(running: RunningStack) -> ShopClient:
    """The user whose token the fuzzer sends to the order and user services."""
    return running.client.sign_up("Fuzz")


@pytest.fixture(scope="session")
def known(running: RunningStack, customer: ShopClient) -> dict[str, str]:
    """A user, a product in stock and an order that every service has heard of, so the
    fuzzer reaches past "unknown id" (404, 422) into the routes' real work."""
    product_id = running.operator.create_product(unique("fuzzed"), 100)["id"]
    running.operator.set_stock_eventually(product_id, 1_000_000)
    line = {"product_id": product_id, "quantity": 1}
    order_id = customer.place_order_eventually([line])["id"]
    assert customer.user_id is not None
    return {"user": customer.user_id, "product": product_id, "order": order_id}


@pytest.fixture(scope="session")
def bearer(running: RunningStack, customer: ShopClient) -> dict[str, str]:
    """Service → the token it is fuzzed with: the customer's where customers act (order,
    user), the operator's where the operator does (inventory, product). Signed in here,
    not at start-up: a token lives 15 minutes."""
    operator = running.client.as_operator(password_file=running.stack.operator_password_file)
    assert customer.token is not None and operator.token is not None
    return {
        "order": customer.token,
        "user": customer.token,
        "inventory": operator.token,
        "product": operator.token,
    }


def served_schema(
    running: RunningStack, service: str, known: dict[str, str], token: str
) -> BaseSchema:
    """The OpenAPI the running service serves, fuzzed with a fixed seed and `token` on
    every request. Half of the ids are the known ones, half of the e-mails well-formed
    (the schema says only "string"). The stateful phase (chains of calls) is left out."""
    half = 0.5
    dictionaries = {name: {"values": [value]} for name, value in known.items()}
    dictionaries["email"] = {"values": [random_email() for _ in range(10)]}
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "headers": {"Authorization": f"Bearer {token}"},
            "phases": {"stateful": {"enabled": False}},
            "dictionaries": dictionaries,
            "parameters": {
                "path.order_id": {"dictionary": "order", "probability": half},
                "path.product_id": {"dictionary": "product", "probability": half},
                "path.user_id": {"dictionary": "user", "probability": half},
                "body.items[*].product_id": {"dictionary": "product", "probability": half},
                "body.email": {"dictionary": "email", "probability": half},
            },
        }
    )
    url = running.stack.services[service].url
    return schemathesis.openapi.from_url(f"{url}/openapi.json", config=config)


@pytest.fixture(params=SERVICES)
def service_schema(
    request: pytest.FixtureRequest,
    running: RunningStack,
    known: dict[str, str],
    bearer: dict[str, str],
) -> BaseSchema:
    return served_schema(running, request.param, known, bearer[request.param])


@pytest.fixture
def node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    """schemathesis 4.32's `from_fixture` reads and relabels `item._nodeid`, which pytest
    9.2 no longer has (it keeps a structured id); give it the string it expects."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


fuzzed = schemathesis.pytest.from_fixture("service_schema")


@fuzzed.parametrize()
@pytest.mark.usefixtures("node_id_for_schemathesis")
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_answers_generated_input_as_documented(case: Case) -> None:
    case.call_and_validate(checks=CHECKS)


@pytest.fixture(scope="session")
def schemas(
    running: RunningStack, known: dict[str, str], bearer: dict[str, str]
) -> dict[str, BaseSchema]:
    return {
        service: served_schema(running, service, known, bearer[service]) for service in SERVICES
    }


def assert_documented(
    schema: BaseSchema, method: str, path: str, response: httpx.Response, **path_parameters: str
) -> Any:
    """Check `response` against what the operation documents; return its JSON body."""
    case = schema[path][method].Case(path_parameters=path_parameters)
    case.validate_response(response, checks=CHECKS)
    return response.json()


BODY_ROUTES = [
    ("order", "POST", "/orders"),
    ("inventory", "PUT", "/stock/{product_id}"),
    ("product", "POST", "/products"),
    ("user", "POST", "/users"),
]


@pytest.mark.parametrize(("service", "method", "path"), BODY_ROUTES)
def test_a_body_over_the_limit_is_answered_413_with_a_json_detail(
    running: RunningStack, schemas: dict[str, BaseSchema], service: str, method: str, path: str
) -> None:
    ids = {"product_id": unique("p")} if "{product_id}" in path else {}
    url = running.stack.services[service].url + path.format(**ids)
    body = b'{"name": "' + b"x" * LIMIT + b'"}'
    response = running.client.http.request(
        method, url, content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    detail = assert_documented(schemas[service], method, path, response, **ids)["detail"]
    assert str(LIMIT) in detail


def test_an_order_of_101_items_is_answered_422_naming_the_limit(
    customer: ShopClient, schemas: dict[str, BaseSchema], known: dict[str, str]
) -> None:
    items = [{"product_id": known["product"], "quantity": 1}] * (MAX_ITEMS + 1)
    response = customer.place_order(items)
    assert response.status_code == 422
    [error] = assert_documented(schemas["order"], "POST", "/orders", response)["detail"]
    assert error["loc"] == ["body", "items"]
    assert error["ctx"]["max_length"] == MAX_ITEMS
    assert str(MAX_ITEMS) in error["msg"]


def test_a_streamed_body_without_content_length_over_the_limit_is_answered_413(
    running: RunningStack,
    schemas: dict[str, BaseSchema],
    known: dict[str, str],
    customer: ShopClient,
) -> None:
    def chunks() -> Iterator[bytes]:
        line = {"product_id": known["product"], "quantity": 1}
        yield orjson.dumps({"items": [line]})[:-1]
        for _ in range(LIMIT // 4096 + 1):
            yield b" " * 4096  # whitespace between JSON tokens: only the size is wrong
        yield b"}"

    request = running.client.http.build_request(
        "POST",
        running.stack.services["order"].url + "/orders",
        content=chunks(),
        headers={
            "content-type": "application/json",
            "authorization": f"Bearer {customer.token}",
        },
    )
    assert "content-length" not in request.headers
    assert request.headers["transfer-encoding"] == "chunked"
    response = running.client.http.send(request)
    assert response.status_code == 413
    # Schemathesis records the request's body, and a stream cannot be read twice.
    response.request = httpx.Request(request.method, request.url)
    detail = assert_documented(schemas["order"], "POST", "/orders", response)["detail"]
    assert str(LIMIT) in detail
