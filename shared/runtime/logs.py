"""Logs as JSON lines, one object a record, for machines to collect; `LOG_FORMAT=text`
for people at a terminal.

Every line names the service and level, the trace and span it was written in, and the
consumed event being handled (its id and type), so a log line leads to its trace and
its event. Nothing here logs a request's headers or body: tokens and passwords never
reach a log."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import orjson
from opentelemetry import trace

from shared.messaging import tracing

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_UVICORN = ("uvicorn", "uvicorn.error")
_HANDLER = "service-log"


class JsonLines(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            line["trace_id"] = format(context.trace_id, "032x")
            line["span_id"] = format(context.span_id, "016x")
        if (event := tracing.handling()) is not None:
            line["event_id"], line["event_type"] = event.id, event.type
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line).decode()


def configure_logging(service: str, log_format: str = "json") -> None:
    """Send the root logger's records, and uvicorn's, to stderr in `log_format`."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter(TEXT_FORMAT) if log_format == "text" else JsonLines(service)
    )
    handler.set_name(_HANDLER)
    root = logging.getLogger()
    for previous in [h for h in root.handlers if h.get_name() == _HANDLER]:
        root.removeHandler(previous)  # configured again (a second app in one process)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    for name in _UVICORN:
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
