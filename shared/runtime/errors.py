"""How the HTTP edge answers what went wrong: the error bodies routes declare, and the one
table that turns each family of domain errors (shared.errors) into a status and headers."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from sqlalchemy.exc import DataError

from shared.errors import Busy, Conflict, DomainError, Invalid, NotAuthenticated, NotFound


class Error(BaseModel):
    """The body of every error a service answers itself: domain errors, 400 and 413."""

    detail: str


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrors(BaseModel):
    """The body of FastAPI's 422 for a request that does not match its schema."""

    detail: list[ValidationIssue]


Responses = dict[int | str, dict[str, Any]]


def errors(described: Mapping[int, str]) -> Responses:
    """A route's `responses=`: each status answered with an `Error` body, as described."""
    return {status: {"model": Error, "description": text} for status, text in described.items()}


BODY_ERRORS: Responses = errors(
    {
        400: "Request body unreadable (not UTF-8)",
        413: "Request body larger than the limit",
    }
)
"""What any route with a request body may answer before it validates the body."""


def challenge(credential_problem: str | None) -> str:
    """The `WWW-Authenticate` of a 401 (RFC 6750): what was wrong with the token, if one
    was presented and refused."""
    if credential_problem is None:
        return "Bearer"
    return f'Bearer error="invalid_token", error_description="{credential_problem}"'


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: Callable[[Any], dict[str, str]] | None = None
    """The headers the answer carries, from the error."""


ANSWERS: dict[type[DomainError], Answer] = {
    NotFound: Answer(404),
    Conflict: Answer(409),
    Invalid: Answer(422),
    NotAuthenticated: Answer(
        401, lambda exc: {"WWW-Authenticate": challenge(exc.credential_problem)}
    ),
    Busy: Answer(503, lambda exc: {"Retry-After": str(exc.retry_after)}),
    DomainError: Answer(400),
}
"""Each family of domain errors and its answer; an error takes the row of its nearest
family. The body is always `Error`: `{"detail": exc.message}`."""


def answer_to(exc: DomainError) -> tuple[int, dict[str, str] | None]:
    """The status and headers that answer `exc`."""
    answer = next(ANSWERS[kind] for kind in type(exc).__mro__ if kind in ANSWERS)
    return answer.status, answer.headers(exc) if answer.headers else None


async def _domain_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DomainError)
    status, headers = answer_to(exc)
    return JSONResponse({"detail": exc.message}, status_code=status, headers=headers)


async def _unstorable(_request: Request, exc: Exception) -> Response:
    """A value the schema let through but the database cannot hold (PostgreSQL refuses a
    NUL character in text, for one): the request's fault, so a 422 shaped like FastAPI's."""
    assert isinstance(exc, DataError)
    reason = str(getattr(exc, "orig", exc)).splitlines()[0]
    issue = {"loc": ["body"], "msg": f"value cannot be stored: {reason}", "type": "value_error"}
    return JSONResponse({"detail": [issue]}, status_code=422)


def install_error_answers(app: FastAPI) -> None:
    """Answer domain errors from the table, and values the database refuses with 422."""
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(DataError, _unstorable)
