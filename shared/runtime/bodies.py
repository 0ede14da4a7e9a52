"""Bounded request bodies: 413 for a body over the limit, declared or streamed
(`ServiceMiddleware` in shared.runtime.middleware applies the limit)."""

from __future__ import annotations

import orjson
from fastapi import HTTPException
from starlette.types import Send


class TooLarge(HTTPException):
    """Raised from `receive` once a streamed body passes the limit. An HTTPException, so
    FastAPI's body reading passes it through (any other exception becomes its 400)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, _too_large_detail(limit))


def _too_large_detail(limit: int) -> str:
    return f"request body is larger than {limit} bytes"


async def too_large(limit: int, send: Send) -> None:
    """Answer 413 for a body over `limit`."""
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
