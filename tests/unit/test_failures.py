"""Which failures the consumer and the relay wait out, and which they blame on the value
at hand: waiting out a refused value would rewind a partition, or hold a relay, forever."""

from __future__ import annotations

import sqlite3

import psycopg
import pytest
from psycopg import errors
from sqlalchemy.exc import DataError, IntegrityError, OperationalError, StatementError

from shared.messaging.failures import transient

pytestmark = pytest.mark.unit


def wrapped(kind: type[StatementError], orig: Exception) -> Exception:
    return kind("INSERT ...", {}, orig)


@pytest.mark.parametrize(
    "failure",
    [
        wrapped(DataError, errors.StringDataRightTruncation("value too long")),
        wrapped(DataError, psycopg.DataError("text fields cannot contain NUL (0x00) bytes")),
        wrapped(DataError, errors.NumericValueOutOfRange("integer out of range")),
        wrapped(IntegrityError, errors.CheckViolation("violates check constraint")),
        wrapped(IntegrityError, sqlite3.IntegrityError("CHECK constraint failed: note_fits")),
        wrapped(OperationalError, errors.ProgramLimitExceeded("index row size exceeds maximum")),
        wrapped(OperationalError, sqlite3.OperationalError("no such table: orders")),
        StatementError("a bind processor refused the value", "INSERT ...", {}, ValueError()),
        ValueError("a hook's own bug"),
    ],
    ids=lambda exc: type(getattr(exc, "orig", None) or exc).__name__,
)
def test_a_value_the_database_refuses_is_not_an_outage(failure: Exception) -> None:
    assert not transient(failure)


@pytest.mark.parametrize(
    "failure",
    [
        wrapped(OperationalError, psycopg.OperationalError("connection refused")),
        wrapped(OperationalError, errors.AdminShutdown("terminating connection")),
        wrapped(OperationalError, errors.QueryCanceled("statement timeout")),
        wrapped(OperationalError, errors.DiskFull("could not extend file")),
        wrapped(OperationalError, sqlite3.OperationalError("database is locked")),
    ],
    ids=lambda exc: type(exc.orig).__name__,  # type: ignore[attr-defined]
)
def test_an_outage_is_waited_out(failure: Exception) -> None:
    assert transient(failure)
