"""What every service's HTTP side shares: tracing, metrics and size-limit middleware, the
error envelope, and the /health, /ready and /metrics endpoints."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any, Literal

import orjson
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from fastapi.telemetry import TelemetryConfig
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sqlalchemy.exc import DataError
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.messaging import tracing
from shared.runtime import ids
from shared.runtime.headers import HeadLimitMiddleware
from shared.runtime.metrics import UNMATCHED
from shared.runtime.proxy import ForwardedFor, Network


class DomainError(Exception):
    """A rule of the domain said no. Subclasses set the HTTP status and carry the ids."""

    status_code = 400
    headers: dict[str, str] | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(DomainError):
    status_code = 404


class Conflict(DomainError):
    status_code = 409


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


class KafkaReadiness(BaseModel):
    """How the cluster serves the topics the service publishes to (shared.messaging.health)."""

    state: Literal["ok", "degraded", "down"]
    brokers: int
    detail: str


class Readiness(BaseModel):
    """The body of /ready. 200 for `ready` and `degraded` (Kafka takes writes with less
    redundancy); 503 for `down`, when a check fails. Orders are still accepted then: their
    events wait in the outbox (docs/broker-loss.md)."""

    ready: bool
    status: Literal["ready", "degraded", "down"]
    checks: dict[str, bool]
    kafka: KafkaReadiness | None = None


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


class _TooLarge(HTTPException):
    """Raised from `receive` once a streamed body passes the limit. An HTTPException, so
    FastAPI's body reading passes it through (any other exception becomes its 400)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, _too_large_detail(limit))


def _too_large_detail(limit: int) -> str:
    return f"request body is larger than {limit} bytes"


class BodyLimitMiddleware:
    """Answers 413 to a request body over `max_bytes`, declared or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await _too_large(self.max_bytes, send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise _TooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _too_large(self.max_bytes, send)


async def _too_large(limit: int, send: Send) -> None:
    body = orjson.dumps({"detail": _too_large_detail(limit)})
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _domain_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DomainError)
    return JSONResponse({"detail": exc.message}, status_code=exc.status_code, headers=exc.headers)


async def _unstorable(_request: Request, exc: Exception) -> Response:
    """A value the schema let through but the database cannot hold (PostgreSQL refuses a
    NUL character in text, for one): the request's fault, so a 422 shaped like FastAPI's."""
    assert isinstance(exc, DataError)
    reason = str(getattr(exc, "orig", exc)).splitlines()[0]
    issue = {"loc": ["body"], "msg": f"value cannot be stored: {reason}", "type": "value_error"}
    return JSONResponse({"detail": [issue]}, status_code=422)


def install(app: FastAPI, *, max_body_bytes: int, trusted_proxies: Sequence[Network] = ()) -> None:
    """Add the middleware, the error handlers and the operational endpoints.
    `trusted_proxies`: the peers whose `X-Forwarded-For` names the client."""
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    app.add_middleware(TracingMiddleware)
    app.add_middleware(HeadLimitMiddleware)
    app.add_middleware(MetricsMiddleware)
    app.add_middleware(ForwardedFor, trusted=trusted_proxies)
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(DataError, _unstorable)

    @app.get("/health", tags=["ops"])
    def health(request: Request) -> dict[str, Any]:
        """Liveness: the process answers, naming its service and its pid (a launcher
        checks that the process answering on the port is the one it started)."""
        spec = getattr(getattr(request.app.state, "runtime", None), "spec", None)
        return {"status": "ok", "service": getattr(spec, "name", ""), "pid": os.getpid()}

    @app.get(
        "/ready",
        tags=["ops"],
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "Not ready"}},
    )
    def ready(request: Request) -> JSONResponse:
        """Readiness: database and broker reachable, consumer and outbox relay running,
        and not draining (told to stop: shared.runtime.server)."""
        if getattr(request.app.state, "draining", False):
            body = {"ready": False, "status": "down", "checks": {"draining": False}}
            return JSONResponse(body, status_code=503)
        runtime = getattr(request.app.state, "runtime", None)
        checks: dict[str, Any] = runtime.readiness() if runtime else {"started": False}
        health = getattr(runtime, "kafka_health", None)
        kafka = asdict(health()) if health else None
        ok = all(checks.values()) and (kafka is None or kafka["state"] != "down")
        status = (
            "down" if not ok else "degraded" if kafka and kafka["state"] == "degraded" else "ready"
        )
        body = {"ready": ok, "status": status, "checks": checks, "kafka": kafka}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["ops"], include_in_schema=False)
    def metrics(request: Request) -> Response:
        runtime = getattr(request.app.state, "runtime", None)
        registry = runtime.metrics if runtime else None
        payload = generate_latest(registry) if registry else b""
        return Response(payload, media_type=CONTENT_TYPE_LATEST)
