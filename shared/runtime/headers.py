"""Request heads have a size: the request target at most `MAX_URL_BYTES`, the header
fields at most `MAX_HEADER_BYTES` (names and values together). A request over them is
answered 414 or 431, whatever serves the app: `ServiceMiddleware` checks every request
the app gets, and the HTTP protocol the services run (shared.runtime.protocol) refuses
one while it is still arriving, so that a server never buffers more than about that.

16 KiB is HAProxy's default buffer and more than any client of this shop sends (a bearer
token is under 1 KiB)."""

from __future__ import annotations

import orjson
from starlette.types import Scope

MAX_HEADER_BYTES = 16 * 1024
MAX_URL_BYTES = 8 * 1024

TOO_LONG = {
    414: f"request target is longer than {MAX_URL_BYTES} bytes",
    431: f"request header fields are larger than {MAX_HEADER_BYTES} bytes",
}


def header_bytes(headers: list[tuple[bytes, bytes]]) -> int:
    return sum(len(name) + len(value) for name, value in headers)


def url_bytes(scope: Scope) -> int:
    return len(scope.get("raw_path") or scope["path"].encode()) + len(scope["query_string"])


def refusal(status: int) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The headers and body of a 414 or 431 (the connection is closed after it)."""
    body = orjson.dumps({"detail": TOO_LONG[status]})
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    return headers, body
