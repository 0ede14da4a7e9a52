"""The identifiers clients send in headers (shared.runtime.ids), and the middleware that
reads them: what is kept, what is replaced, and that nothing hostile gets through."""

from __future__ import annotations

import re

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from shared.messaging import exporters, tracing
from shared.runtime import http, ids

pytestmark = pytest.mark.unit

VALID_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,64}")
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{SPAN_ID}-01"
ANOTHER_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
ANOTHER_TRACEPARENT = f"00-{ANOTHER_TRACE_ID}-b7ad6b7169203331-01"


class Seen(BaseModel):
    """The payload of the events the /cause route emits to see its cause."""


HOSTILE = [
    "r" * 10_000,
    "abc\x00def",
    "r\u00e9quest",
    "\u2603",
    "",
    " ",
    "a b",
    "a\r\nx-injected: 1",
    "r" * 65,
    "id;drop",
    "\ufeffid",
]


@pytest.fixture(autouse=True)
def _tracer() -> None:
    exporters.configure("test")


@pytest.mark.parametrize(
    "value",
    [
        "1",
        "r" * 64,
        "0e4b7c8a-5a9f-4d55-9a1c-2f3bd5f0b0e1",
        "01HZX3J9Q7XK8M6N5P4R3S2T1V",
        "dGhpcyBpcyBiYXNlNjQ=",
        "a_b-c.d:e/f+g=",
    ],
)
def test_request_and_correlation_ids_in_the_syntax_are_kept(value: str) -> None:
    assert ids.request_id(value) == value
    assert ids.correlation_id(value) == value


@pytest.mark.parametrize("value", HOSTILE, ids=lambda v: repr(v[:12]))
def test_anything_else_is_a_fresh_request_id_and_no_correlation_id(value: str) -> None:
    fresh = ids.request_id(value)

    assert fresh != value and VALID_ID.fullmatch(fresh)
    assert ids.correlation_id(value) is None


def test_a_missing_request_id_is_a_fresh_one_each_time() -> None:
    assert ids.request_id(None) != ids.request_id(None)
    assert ids.correlation_id(None) is None


@given(st.text(max_size=200))
def test_whatever_the_text_a_request_id_comes_out_in_the_syntax(value: str) -> None:
    kept = ids.request_id(value)

    assert VALID_ID.fullmatch(kept)
    assert kept == value or not VALID_ID.fullmatch(value)


@given(st.binary(max_size=300))
def test_whatever_the_bytes_of_a_header_the_ids_come_out_in_the_syntax(raw: bytes) -> None:
    value = raw.decode("latin-1")  # how the middleware reads a header

    assert VALID_ID.fullmatch(ids.request_id(value))
    assert ids.correlation_id(value) in (None, value)
    parent = ids.traceparent(value)
    assert parent is None or re.fullmatch(
        r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", parent
    )
    state = ids.tracestate(value)
    assert state is None or (len(state) <= 512 and state.isascii())


# --- traceparent ------------------------------------------------------------------------


def test_a_version_00_traceparent_is_kept() -> None:
    assert ids.traceparent(TRACEPARENT) == TRACEPARENT
    assert ids.traceparent(f"00-{TRACE_ID}-{SPAN_ID}-00") == f"00-{TRACE_ID}-{SPAN_ID}-00"


@pytest.mark.parametrize(
    "value",
    [
        f"00-{TRACE_ID.upper()}-{SPAN_ID}-01",  # upper case
        f"00-{'0' * 32}-{SPAN_ID}-01",  # all-zero trace id
        f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero parent id
        f"ff-{TRACE_ID}-{SPAN_ID}-01",  # the forbidden version
        f"00-{TRACE_ID}-{SPAN_ID}-01-extra",  # version 00 has nothing after the flags
        f"00-{TRACE_ID}-{SPAN_ID}-1",
        f"00-{TRACE_ID[:-1]}-{SPAN_ID}-01",
        f" 00-{TRACE_ID}-{SPAN_ID}-01",
        f"00-{TRACE_ID}-{SPAN_ID}-01\x00",
        f"0g-{TRACE_ID}-{SPAN_ID}-01",
        f"00_{TRACE_ID}_{SPAN_ID}_01",
        f"01-{TRACE_ID}-{SPAN_ID}-01x",  # a later version: a '-' must follow the flags
        "",
        "x" * 10_000,
        "00-" + "a" * 10_000,
    ],
    ids=lambda v: repr(v[:20]),
)
def test_an_invalid_traceparent_is_ignored(value: str) -> None:
    assert ids.traceparent(value) is None


def test_a_later_version_is_read_as_its_first_four_fields() -> None:
    later = f"cc-{TRACE_ID}-{SPAN_ID}-01"

    assert ids.traceparent(later) == later
    assert ids.traceparent(later + "-what-comes-later") == later
    assert ids.traceparent(later + "-" + "x" * 10_000) == later


# --- tracestate ---------------------------------------------------------------------------


def test_a_well_formed_tracestate_is_kept_without_empty_members() -> None:
    assert ids.tracestate("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE") == (
        "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
    )
    assert ids.tracestate("a=1 , ,tenant@vendor=x y") == "a=1,tenant@vendor=x y"
    assert ids.tracestate("a=x,") == "a=x"


@pytest.mark.parametrize(
    "value",
    [
        "a=1," * 32 + "b=2",  # 33 members
        ",".join(f"k{n}=v" for n in range(33)),
        "a=" + "x" * 600,  # over 512 characters
        "A=1",  # keys are lower case
        "a=1,a=2",  # a key twice
        "a=1=2",
        "a",
        "=1",
        "a=",
        "a=caf\u00e9",
        "a=\x00",
        "",
        ",",
    ],
    ids=lambda v: repr(v[:16]),
)
def test_a_malformed_or_oversized_tracestate_is_dropped(value: str) -> None:
    assert ids.tracestate(value) is None


def test_thirty_two_members_of_at_most_512_characters_are_fine() -> None:
    state = ",".join(f"k{n}=v{n}" for n in range(32))

    assert len(state) <= 512
    assert ids.tracestate(state) == state


# --- Idempotency-Key ----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["k", "k" * 255, "7f1c2a9e", "!~\"'{}", "a-b_c.d:e"])
def test_an_idempotency_key_of_printable_ascii_is_kept(value: str) -> None:
    assert ids.idempotency_key(value) == value
    assert ids.idempotency_key(None) is None


@pytest.mark.parametrize("value", ["", "k" * 256, "two words", "cl\u00e9", "a\x00b", "\t", "a\x7f"])
def test_anything_else_is_an_invalid_idempotency_key(value: str) -> None:
    with pytest.raises(ids.InvalidIdempotencyKey, match="Idempotency-Key"):
        ids.idempotency_key(value)


# --- through the middleware ---------------------------------------------------------------


@pytest.fixture
def client() -> TestClient:
    app = FastAPI()
    http.install(app, max_body_bytes=1024)

    @app.get("/cause")
    def cause(request: Request) -> dict[str, object]:
        """What an event emitted here is caused by, as the outbox would write it; and
        whether the request continued a trace (then an order's stored trace is not
        joined: `join_trace`)."""
        emitted = tracing.new_event("seen", "k", Seen(), source="/tests")
        with tracing.join_trace(ANOTHER_TRACEPARENT):
            joined = tracing.new_event("seen", "k", Seen(), source="/tests")
        parent, state = tracing.current_traceparent()
        return {
            "id": emitted.causation_id,
            "correlation_id": (
                emitted.correlation_id if emitted.correlation_id != emitted.id else None
            ),
            "continued": ANOTHER_TRACE_ID not in (joined.traceparent or ""),
            "traceparent": parent,
            "tracestate": state,
        }

    return TestClient(app)


@pytest.mark.parametrize("value", HOSTILE, ids=lambda v: repr(v[:12]))
def test_the_middleware_replaces_a_hostile_request_id_and_echoes_the_fresh_one(
    client: TestClient, value: str
) -> None:
    answer = client.get("/cause", headers={"x-request-id": value.encode("utf-8")})

    echoed = answer.headers["x-request-id"]
    assert answer.status_code == 200
    assert VALID_ID.fullmatch(echoed) and echoed != value
    assert answer.json()["id"] == echoed


def test_the_middleware_keeps_valid_ids_and_continues_a_valid_trace(client: TestClient) -> None:
    answer = client.get(
        "/cause",
        headers={
            "x-request-id": "req-1",
            "x-correlation-id": "saga-1",
            "traceparent": TRACEPARENT,
            "tracestate": "rojo=1",
        },
    )

    seen = answer.json()
    assert answer.headers["x-request-id"] == "req-1"
    assert (seen["id"], seen["correlation_id"], seen["continued"]) == ("req-1", "saga-1", True)
    assert seen["traceparent"].split("-")[1] == TRACE_ID
    assert answer.headers["x-trace-id"] == TRACE_ID
    assert seen["tracestate"] == "rojo=1"


@pytest.mark.parametrize("value", HOSTILE, ids=lambda v: repr(v[:12]))
def test_the_middleware_drops_a_hostile_correlation_id(client: TestClient, value: str) -> None:
    seen = client.get("/cause", headers={"x-correlation-id": value.encode("utf-8")}).json()

    assert seen["correlation_id"] is None


@pytest.mark.parametrize(
    "value",
    [f"00-{TRACE_ID.upper()}-{SPAN_ID}-01", "x" * 10_000, f"00-{TRACE_ID}-{SPAN_ID}-01\x00", ""],
    ids=lambda v: repr(v[:12]),
)
def test_a_hostile_traceparent_starts_a_new_trace_and_drops_the_tracestate(
    client: TestClient, value: str
) -> None:
    answer = client.get("/cause", headers={"traceparent": value, "tracestate": "rojo=1"})

    seen = answer.json()
    assert seen["continued"] is False
    assert TRACE_ID not in seen["traceparent"]
    assert answer.headers["x-trace-id"] not in (TRACE_ID, "0" * 32)
    assert seen["tracestate"] is None


def test_an_oversized_tracestate_is_dropped_and_the_trace_continued(client: TestClient) -> None:
    answer = client.get(
        "/cause", headers={"traceparent": TRACEPARENT, "tracestate": "a=" + "x" * 600}
    )

    seen = answer.json()
    assert seen["continued"] is True and answer.headers["x-trace-id"] == TRACE_ID
    assert seen["tracestate"] is None
