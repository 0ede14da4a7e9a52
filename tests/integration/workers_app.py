"""An app of nothing but the shared HTTP plumbing and a service's metrics, for serving
with several uvicorn workers (tests/integration/test_metrics.py)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace

from fastapi import FastAPI

from shared.runtime import http
from shared.runtime.metrics import ServiceMetrics


def create_app() -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics = ServiceMetrics("workers", os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        app.state.runtime = SimpleNamespace(
            spec=SimpleNamespace(name="workers"),
            instruments=metrics,
            metrics=metrics.registry,
            readiness=lambda: {"started": True},
        )
        yield
        metrics.close()

    app = FastAPI(lifespan=lifespan)
    http.install(app, max_body_bytes=1024)

    @app.get("/pid")
    def pid() -> int:
        return os.getpid()

    return app
