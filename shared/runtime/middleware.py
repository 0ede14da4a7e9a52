"""The request middleware every service runs, as one ASGI layer: the client's address behind
a trusted proxy, request metrics by route template, the bounds on heads and bodies, and the
server span with its causation context."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from fastapi.telemetry import TelemetryConfig
from opentelemetry.trace import SpanKind, StatusCode
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.messaging import tracing
from shared.runtime import ids
from shared.runtime.bodies import TooLarge, too_large
from shared.runtime.headers import MAX_HEADER_BYTES, MAX_URL_BYTES, refusal, url_bytes
from shared.runtime.metrics import UNMATCHED
from shared.runtime.proxy import Network, TrustedProxies

_WANTED = frozenset(
    {
        b"x-request-id",
        b"traceparent",
        b"tracestate",
        b"x-correlation-id",
        b"content-length",
    }
)
"""The request headers the middleware reads (besides `X-Forwarded-For`)."""


class ServiceMiddleware:
    """Every service's request plumbing as one ASGI layer, in the order the separate
    layers had (outermost first), reading the request's headers once:

    1. the client's address from `X-Forwarded-For` when the peer is a trusted proxy
       (shared.runtime.proxy);
    2. request metrics by method, route template and status, once the service runs
       (its `runtime.instruments`);
    3. 414 for a request target over `MAX_URL_BYTES`, 431 for header fields over
       `MAX_HEADER_BYTES`, before anything reads them (shared.runtime.headers);
    4. the server span: continues the caller's `traceparent` (or starts a trace), makes
       the request the cause of every event it emits, echoes `x-request-id` and
       `x-trace-id`; every id it reads is checked first (shared.runtime.ids), a
       malformed one replaced or ignored;
    5. 413 for a body over `max_body_bytes`, declared or streamed (shared.runtime.bodies;
       None: no limit).
    """

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int | None = None,
        trusted_proxies: Sequence[Network] = (),
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.proxies = TrustedProxies(trusted_proxies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                scope = self.proxies.rewrite(scope)
            await self.app(scope, receive, send)
            return
        raw_headers = scope["headers"]
        size = 0
        found: dict[bytes, bytes] = {}
        forwarded: list[bytes] = []
        for name, value in raw_headers:
            size += len(name) + len(value)
            if name in _WANTED:
                found[name] = value
            elif name == b"x-forwarded-for":
                forwarded.append(value)
        if forwarded:
            scope = self.proxies.rewrite(scope, forwarded)
        instruments = _instruments(scope)
        if instruments is None:
            await self._serve(scope, receive, send, size, found)
            return
        began = time.perf_counter()
        status = 500  # unless the app starts a response

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._serve(scope, receive, send_noting_status, size, found)
        finally:
            instruments.request(scope["method"], _route(scope), status, time.perf_counter() - began)

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, size: int, found: dict[bytes, bytes]
    ) -> None:
        too_long = (
            414 if url_bytes(scope) > MAX_URL_BYTES else 431 if size > MAX_HEADER_BYTES else None
        )
        if too_long is not None:
            headers, body = refusal(too_long)
            await send({"type": "http.response.start", "status": too_long, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        request_id = ids.request_id(_text(found.get(b"x-request-id")))
        traceparent = ids.traceparent(_text(found.get(b"traceparent")))
        tracestate = ids.tracestate(_text(found.get(b"tracestate"))) if traceparent else None
        cause = tracing.Cause(
            request_id,
            ids.correlation_id(_text(found.get(b"x-correlation-id"))),
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
            started = False

            async def send_with_ids(message: Message) -> None:
                nonlocal started
                if message["type"] == "http.response.start":
                    started = True
                    message["headers"] = [
                        *message.get("headers", ()),
                        (b"x-request-id", request_id.encode()),
                        (b"x-trace-id", trace_id.encode()),
                    ]
                    current.set_attribute("http.response.status_code", message["status"])
                    if message["status"] >= 500:
                        current.set_status(StatusCode.ERROR)
                await send(message)

            try:
                await self._limited(scope, receive, send_with_ids, found.get(b"content-length"))
            except TooLarge:
                if not started:
                    await too_large(self.max_body_bytes or 0, send_with_ids)
            finally:
                if route := route_template(scope):
                    current.update_name(f"{method} {route}")
                    current.set_attribute("http.route", route)

    async def _limited(
        self, scope: Scope, receive: Receive, send: Send, declared: bytes | None
    ) -> None:
        """The app, its body bounded: a declared length over the limit (or not a number)
        answered at once, a streamed one stopped with `TooLarge` once it passes."""
        limit = self.max_body_bytes
        if limit is None:
            await self.app(scope, receive, send)
            return
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await too_large(limit, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise TooLarge(limit)
            return message

        await self.app(scope, limited_receive, send)


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


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
"""FastAPI's own spans, metrics and logs, off: `ServiceMiddleware` makes the one server span
(it also sets the causation context), and metrics and logs are the service's own."""


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
