"""The HTTP ceiling: FastAPI endpoints that do nothing, served like the services are.

    python -m services tools.bench.bare_app:create_app --port 8199

`POST /orders` is an `async def` that answers 202 at once (FastAPI + uvicorn and nothing
else); `POST /orders-sync` is a plain `def`, which FastAPI runs in its threadpool, as it
does the order service's `place_order`. Neither reads the body."""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI, Response


def create_app() -> FastAPI:
    app = FastAPI(title="bench: bare endpoint")

    @app.post("/orders", status_code=202)
    async def accept() -> Response:
        return Response(status_code=202)

    @app.post("/orders-sync", status_code=202)
    def accept_in_threadpool() -> Response:
        return Response(status_code=202)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "service": "bare", "pid": os.getpid()}

    @app.get("/ready")
    async def ready() -> Response:
        return Response(status_code=200)

    return app
