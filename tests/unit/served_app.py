"""A bare app with the services' HTTP plumbing, served by tests/unit/test_headers.py as
`python -m services tests.unit.served_app:plain_app --port PORT`."""

from __future__ import annotations

from fastapi import FastAPI

from shared.runtime import http


def plain_app() -> FastAPI:
    app = FastAPI()
    http.install(app, max_body_bytes=1024)

    @app.get("/echo")
    def echo() -> str:
        return "ok"

    return app
