"""The services' request plumbing is one ASGI layer (shared.runtime.middleware): bodies
bounded whether declared or streamed, the 413 carrying the request's ids, a forged or
malformed length refused, and the order the separate layers had kept (a head over the
limit is refused before the span or the body limit reads anything)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from shared.runtime import http
from shared.runtime.headers import MAX_HEADER_BYTES
from shared.runtime.middleware import ServiceMiddleware

pytestmark = pytest.mark.unit

LIMIT = 1024


def app() -> FastAPI:
    service = FastAPI()
    http.install(service, max_body_bytes=LIMIT)

    @service.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"received": len(await request.body())}

    return service


def test_the_services_run_one_middleware_layer() -> None:
    service = app()

    assert [entry.cls for entry in service.user_middleware] == [ServiceMiddleware]


def test_a_body_within_the_limit_reaches_the_route_with_the_ids_echoed() -> None:
    answer = TestClient(app()).post("/echo", content=b"x" * LIMIT)

    assert answer.status_code == 200
    assert answer.json() == {"received": LIMIT}
    assert answer.headers["x-request-id"]
    assert len(answer.headers["x-trace-id"]) == 32


def test_a_declared_body_over_the_limit_is_413_with_the_request_id() -> None:
    answer = TestClient(app()).post(
        "/echo", content=b"x" * (LIMIT + 1), headers={"x-request-id": "req-413"}
    )

    assert answer.status_code == 413
    assert answer.json() == {"detail": f"request body is larger than {LIMIT} bytes"}
    assert answer.headers["x-request-id"] == "req-413"


def test_a_streamed_body_over_the_limit_is_413() -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(4):
            yield b"x" * 512

    answer = TestClient(app()).post("/echo", content=chunks())

    assert answer.status_code == 413
    assert answer.json() == {"detail": f"request body is larger than {LIMIT} bytes"}


@pytest.mark.parametrize("declared", ["-1", "1e3", "12abc"])
def test_a_content_length_that_is_not_a_number_is_413(declared: str) -> None:
    client = TestClient(app())
    answer = client.post("/echo", content=b"x", headers={"content-length": declared})

    assert answer.status_code == 413


def test_a_head_over_the_limit_is_refused_before_the_span_gives_it_ids() -> None:
    answer = TestClient(app()).post(
        "/echo", content=b"x", headers={"x-pad": "a" * MAX_HEADER_BYTES}
    )

    assert answer.status_code == 431
    assert "x-request-id" not in answer.headers
