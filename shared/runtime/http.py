"""What every service's HTTP side shares: its middleware and error answers installed in
order, and the /health, /ready and /metrics endpoints."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from shared.runtime.errors import install_error_answers
from shared.runtime.middleware import ServiceMiddleware
from shared.runtime.proxy import Network


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


def install(app: FastAPI, *, max_body_bytes: int, trusted_proxies: Sequence[Network] = ()) -> None:
    """Add the middleware (one layer: shared.runtime.middleware), the error handlers and
    the operational endpoints.
    `trusted_proxies`: the peers whose `X-Forwarded-For` names the client."""
    app.add_middleware(
        ServiceMiddleware, max_body_bytes=max_body_bytes, trusted_proxies=trusted_proxies
    )
    install_error_answers(app)

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
        the consumer caught up with the history it found at start (backfill), and not
        draining (told to stop: shared.runtime.server)."""
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
