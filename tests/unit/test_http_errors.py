"""The HTTP edge's answers to errors, on a bare app: the table of domain errors
(shared.errors) and the database's refusals."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.exc import DataError

import shared.errors
from shared.errors import Busy, Conflict, DomainError, Invalid, NotAuthenticated, NotFound
from shared.runtime import http
from shared.runtime.errors import ANSWERS

pytestmark = pytest.mark.unit


def test_a_value_the_database_cannot_store_is_a_422_not_a_500() -> None:
    app = FastAPI()
    http.install(app, max_body_bytes=1024)

    @app.post("/things")
    def create() -> None:
        raise DataError("INSERT ...", {}, Exception("text fields cannot contain NUL (0x00)"))

    response = TestClient(app).post("/things", json={})

    assert response.status_code == 422
    [issue] = response.json()["detail"]
    assert issue["type"] == "value_error" and "NUL" in issue["msg"]


class OrderGone(NotFound):
    """A service's error: it takes the answer of its family."""

    def __init__(self, order_id: str) -> None:
        super().__init__(f"order {order_id} not found")


class StrangeRule(DomainError):
    """An error of no family but the base."""


@pytest.mark.parametrize(
    ("error", "status", "headers"),
    [
        (NotFound("no such thing"), 404, {}),
        (OrderGone("o-1"), 404, {}),
        (Conflict("taken"), 409, {}),
        (Invalid("unknown product"), 422, {}),
        (NotAuthenticated("incorrect e-mail or password"), 401, {"www-authenticate": "Bearer"}),
        (
            NotAuthenticated("unknown user u-1", credential_problem="unknown user"),
            401,
            {"www-authenticate": 'Bearer error="invalid_token", error_description="unknown user"'},
        ),
        (Busy("too many at once", retry_after=3), 503, {"retry-after": "3"}),
        (StrangeRule("no"), 400, {}),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else None,
)
def test_each_domain_error_is_answered_from_the_table_with_its_message(
    error: DomainError, status: int, headers: dict[str, str]
) -> None:
    app = FastAPI()
    http.install(app, max_body_bytes=1024)

    @app.get("/thing")
    def refuse() -> None:
        raise error

    response = TestClient(app).get("/thing")

    assert response.status_code == status
    assert response.json() == {"detail": error.message}
    for name in ("www-authenticate", "retry-after"):
        assert response.headers.get(name) == headers.get(name)


def test_every_family_of_shared_errors_has_a_row_and_only_the_base_answers_400() -> None:
    families = {cls for cls in vars(shared.errors).values() if isinstance(cls, type)}

    assert families == set(ANSWERS)
    assert [kind for kind, row in ANSWERS.items() if row.status == 400] == [DomainError]
