"""The request middleware every service runs: the server span with its causation context,
and request metrics by route template."""

from __future__ import annotations

import time
from typing import Any

from fastapi.telemetry import TelemetryConfig
from opentelemetry.trace import SpanKind, StatusCode
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.messaging import tracing
from shared.runtime import ids
from shared.runtime.metrics import UNMATCHED


class TracingMiddleware:
    """Continues the caller's `traceparent` (or starts a trace) and makes the request the
    cause of every event it emits. Echoes `x-request-id` and `x-trace-id`. Every id it
    reads is checked first (shared.runtime.ids): a malformed one is replaced or ignored."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        request_id = ids.request_id(headers.get("x-request-id"))
        traceparent = ids.traceparent(headers.get("traceparent"))
        tracestate = ids.tracestate(headers.get("tracestate")) if traceparent else None
        cause = tracing.Cause(
            request_id,
            ids.correlation_id(headers.get("x-correlation-id")),
            continued=traceparent is not None,
        )
        method = scope["method"]
        with tracing.span(
            method,
            cause=cause,
            traceparent=traceparent,
            tracestate=tracestate,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": scope["path"]},
        ) as current:
            trace_id = format(current.get_span_context().trace_id, "032x")

            async def send_with_ids(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message.setdefault("headers", [])
                    message["headers"] = [
                        *message["headers"],
                        (b"x-request-id", request_id.encode()),
                        (b"x-trace-id", trace_id.encode()),
                    ]
                    current.set_attribute("http.response.status_code", message["status"])
                    if message["status"] >= 500:
                        current.set_status(StatusCode.ERROR)
                await send(message)

            try:
                await self.app(scope, receive, send_with_ids)
            finally:
                if route := route_template(scope):
                    current.update_name(f"{method} {route}")
                    current.set_attribute("http.route", route)


def route_template(scope: Scope) -> str | None:
    """The path template of the route that answered (`/orders/{order_id}`), if any."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else None


TELEMETRY: TelemetryConfig = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "operation_spans": False,
}
"""FastAPI's own spans, metrics and logs, off: `TracingMiddleware` makes the one server span
(it also sets the causation context), and metrics and logs are the service's own."""


class MetricsMiddleware:
    """Counts and times each request by method, route template and status, once the
    service runs (its `runtime.instruments`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        instruments = _instruments(scope)
        if scope["type"] != "http" or instruments is None:
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500  # unless the app starts a response

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            instruments.request(scope["method"], _route(scope), status, time.perf_counter() - began)


def _instruments(scope: Scope) -> Any:
    """The running service's `ServiceMetrics`, if it runs."""
    runtime = getattr(scope["app"].state, "runtime", None) if "app" in scope else None
    return getattr(runtime, "instruments", None)


def _route(scope: Scope) -> str:
    """The template of the route that took the request (`/orders/{order_id}`); for one
    answered before routing (a 413), the route that would have; else UNMATCHED."""
    route = scope.get("route")
    if route is None:
        for candidate in scope["app"].router.routes:
            if candidate.matches(scope)[0] is not Match.NONE:
                route = candidate
                break
    return getattr(route, "path_format", None) or UNMATCHED
