"""The HTTP plumbing's error mapping, on a bare app."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.exc import DataError

from shared.runtime import http

pytestmark = pytest.mark.unit


def test_a_value_the_database_cannot_store_is_a_422_not_a_500() -> None:
    app = FastAPI()
    http.install(app, max_body_bytes=1024)

    @app.post("/things")
    def create() -> None:
        raise DataError("INSERT ...", {}, Exception("text fields cannot contain NUL (0x00)"))

    response = TestClient(app).post("/things", json={})

    assert response.status_code == 422
    [issue] = response.json()["detail"]
    assert issue["type"] == "value_error" and "NUL" in issue["msg"]
