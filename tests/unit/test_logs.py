"""Log lines: JSON with the service, trace, span and the event being handled; or text."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import orjson
import pytest
from pydantic import BaseModel

from shared.messaging import exporters, tracing
from shared.runtime.logs import JsonLines, configure_logging

pytestmark = pytest.mark.unit


class Tick(BaseModel):
    seq: int


@pytest.fixture
def lines() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLines("inventory"))
    logger = logging.getLogger("tests.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def read(stream: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_a_line_names_the_service_level_logger_and_message(
    lines: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = lines
    logger.warning("stock of %s is low", "p-1")
    [line] = read(stream)
    assert line["service"] == "inventory" and line["level"] == "warning"
    assert line["logger"] == "tests.logs" and line["message"] == "stock of p-1 is low"
    assert "trace_id" not in line and "event_id" not in line


def test_a_line_written_while_handling_an_event_names_its_trace_span_and_event(
    lines: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = lines
    exporters.configure("inventory")
    with tracing.span("POST /ticks", cause=tracing.Cause("request-1")):
        event = tracing.new_event("tick", "k", Tick(seq=1), source="/tests")
    with tracing.consuming(event):
        logger.info("handling")
    logger.info("after")
    handled, after = read(stream)
    assert handled["event_id"] == event.id and handled["event_type"] == "tick"
    assert event.traceparent is not None
    assert handled["trace_id"] == event.traceparent.split("-")[1]
    assert isinstance(handled["span_id"], str) and len(handled["span_id"]) == 16
    assert "event_id" not in after


def test_an_exception_is_one_json_line_with_its_traceback(
    lines: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = lines
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")
    [line] = read(stream)
    assert "ValueError: boom" in str(line["exception"])


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_configure_logging_picks_the_format_and_replaces_only_its_own_handler(
    log_format: str,
) -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        configure_logging("order", log_format)
        configure_logging("order", log_format)
        ours = [h for h in root.handlers if h not in before]
        assert len(ours) == 1, "a second call replaces the first handler"
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
        text = ours[0].format(record)
        if log_format == "json":
            assert orjson.loads(text)["message"] == "hello"
        else:
            assert text.endswith("INFO x: hello")
        assert all(h in root.handlers for h in before)
    finally:
        root.handlers[:] = before
