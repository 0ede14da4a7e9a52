"""A service's FastAPI app: its routes, the runtime started in its lifespan (never at
import time), the shared HTTP plumbing and `/asyncapi.json`.

    create_app = app_factory(SPEC, OrderSettings, title="Order service", routers=[api.router])
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from shared.messaging import asyncapi
from shared.runtime import http, middleware
from shared.runtime.drain import Drain
from shared.runtime.logs import configure_logging
from shared.runtime.service import ServiceRuntime, ServiceSpec
from shared.runtime.settings import ServiceSettings


async def get_runtime(request: Request) -> ServiceRuntime:
    """The running service's runtime, as a route dependency. (A coroutine, as every
    dependency that does no I/O is here: FastAPI runs a plain `def` dependency in its
    threadpool, a thread hop per request.)"""
    runtime: ServiceRuntime = request.app.state.runtime
    return runtime


def app_factory(
    spec: ServiceSpec,
    settings_class: type[ServiceSettings],
    *,
    title: str,
    routers: Sequence[APIRouter] = (),
) -> Callable[[ServiceSettings | None], FastAPI]:
    """`create_app(settings=None)` for uvicorn's `--factory`; settings default to the
    environment's."""

    def create_app(settings: ServiceSettings | None = None) -> FastAPI:
        return create_service_app(spec, settings or settings_class(), title=title, routers=routers)

    return create_app


def create_service_app(
    spec: ServiceSpec,
    settings: ServiceSettings,
    *,
    title: str,
    routers: Sequence[APIRouter] = (),
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(spec.name, settings.log_format)
        runtime = ServiceRuntime(spec, settings)
        runtime.start()
        app.state.runtime = runtime
        Drain(app.state, settings.shutdown_grace_seconds).install()
        try:
            yield
        finally:
            runtime.stop()

    app = FastAPI(title=title, lifespan=lifespan, telemetry=middleware.TELEMETRY)
    app.state.settings = settings
    http.install(
        app, max_body_bytes=settings.max_body_bytes, trusted_proxies=settings.trusted_proxies
    )
    for router in routers:
        app.include_router(router)
    _point_token_url_at(app, settings.token_url)

    @app.get("/asyncapi.json", include_in_schema=False)
    def asyncapi_document() -> JSONResponse:
        """The AsyncAPI 3.0 document of the events this service sends and receives."""
        return JSONResponse(
            asyncapi.service_document(
                spec,
                title=title,
                version=app.version,
                bootstrap=settings.kafka_bootstrap_servers,
                topic_prefix=settings.topic_prefix,
                partitions=settings.topic_partitions,
            )
        )

    return app


def _point_token_url_at(app: FastAPI, token_url: str) -> None:
    """Swagger UI's Authorize button gets its token from the user service."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()
        for scheme in schema.get("components", {}).get("securitySchemes", {}).values():
            if password := scheme.get("flows", {}).get("password"):
                password["tokenUrl"] = token_url
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def serve(app: str, *, host: str, port: int, workers: int = 1) -> None:
    """Run the app factory `app` (`module:function`, called with no arguments in each of
    `workers` processes: the app reads its settings from the environment) with uvicorn on
    host:port, with the HTTP protocol that bounds request heads (shared.runtime.protocol).
    The app reads `X-Forwarded-For` itself, from the proxies its settings trust
    (shared.runtime.proxy), so uvicorn's own reading (which trusts 127.0.0.1) is off.
    `python -m services NAME` is how a service is started (services/__main__.py)."""
    import uvicorn

    from shared.runtime.protocol import BoundedHttpToolsProtocol

    uvicorn.run(
        app,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        access_log=False,
        proxy_headers=False,
        http=BoundedHttpToolsProtocol,
    )
