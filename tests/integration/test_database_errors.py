"""A failing statement names what failed, never the values it carried: neither the
exception nor a log line of it holds an e-mail, a password hash or a row."""

from __future__ import annotations

import io
import logging
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, insert
from sqlalchemy.exc import IntegrityError

from services.user.main import SPEC
from services.user.models import User
from shared.runtime.logs import JsonLines
from shared.storage.db import make_engine
from shared.storage.migrations import upgrade

pytestmark = pytest.mark.integration

EMAIL = "ada.lovelace@example.com"
HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2VjcmV0LXNhbHQ$bm90LWEtcmVhbC1oYXNoLWJ1dC1sb25n"
NAME = "Ada Lovelace, countess"


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    upgrade(engine, SPEC.migrations)
    yield engine
    engine.dispose()


def row(**changes: Any) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "name": NAME, "email": EMAIL, "password_hash": HASH} | changes


def failure(engine: Engine, *rows: dict[str, Any]) -> IntegrityError:
    with pytest.raises(IntegrityError) as caught, engine.begin() as connection:
        for each in rows:
            connection.execute(insert(User), each)
    return caught.value


def logged(exc: BaseException) -> str:
    """The line a service logs for it (`log.exception`), traceback and causes included."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLines("user"))
    log = logging.getLogger("test.database_errors")
    log.addHandler(handler)
    try:
        try:
            raise exc
        except IntegrityError:
            log.error("registering failed", exc_info=sys.exc_info())
    finally:
        log.removeHandler(handler)
    return stream.getvalue()


def assert_holds_no_value(exc: IntegrityError) -> None:
    texts = {"str": str(exc), "repr": repr(exc), "cause": str(exc.orig), "log": logged(exc)}
    for where, text in texts.items():
        for secret in (EMAIL, HASH, NAME, "ada.lovelace"):
            assert secret not in text, f"{where} shows {secret!r}:\n{text}"


def test_a_unique_violation_names_the_constraint_not_the_email(engine: Engine) -> None:
    exc = failure(engine, row(), row())
    assert_holds_no_value(exc)
    assert "email" in str(exc).lower() and "INSERT INTO users" in str(exc), (
        "what failed is still said: the statement and the constraint"
    )


def test_a_not_null_violation_does_not_show_the_failing_row(engine: Engine) -> None:
    """PostgreSQL's DETAIL would list the whole row: the e-mail and the hash with it."""
    exc = failure(engine, row(name=None))
    assert_holds_no_value(exc)
    assert "name" in str(exc)
