"""The syntax of the identifiers a client sends in headers, checked where they enter.

- `X-Request-Id`, `X-Correlation-Id`: 1 to 64 characters of `[A-Za-z0-9._:/+=-]` (UUIDs,
  ULIDs, base64url and trace-style ids fit; 64 is the width of the columns they land in).
  Anything else is not an id: a request id is replaced by a fresh one, a correlation id
  is dropped (the events then correlate as if none was sent).
- `traceparent`: W3C Trace Context, strictly. Version `00` is exactly
  `00-<32 hex>-<16 hex>-<2 hex>` in lower case, neither id all zeros. A later version is
  read as the recommendation says: its first four fields in that shape, then nothing or
  a `-` and whatever follows, which is ignored; version `ff` is invalid. An invalid one
  is ignored: the request starts a new trace.
- `tracestate`: kept only beside a valid `traceparent`, and only if it is at most 512
  characters of at most 32 list members, each `key=value` in the recommendation's syntax,
  no key twice; otherwise dropped whole.
- `Idempotency-Key`: 1 to 255 printable ASCII characters, no space (`!` to `~`); anything
  else is refused with 400.
"""

from __future__ import annotations

import re

from shared.messaging.envelope import new_id

ID_PATTERN = r"[A-Za-z0-9._:/+=-]{1,64}"
_ID = re.compile(ID_PATTERN)
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?", re.S)
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16
TRACESTATE_MAX_CHARS = 512
TRACESTATE_MAX_MEMBERS = 32
_KEY = r"[a-z0-9][_0-9a-z*/-]{0,255}|[a-z0-9][_0-9a-z*/-]{0,240}@[a-z][_0-9a-z*/-]{0,13}"
_VALUE = r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
_MEMBER = re.compile(rf"({_KEY})=({_VALUE})")
IDEMPOTENCY_KEY_MAX = 255
_IDEMPOTENCY_KEY = re.compile(rf"[\x21-\x7e]{{1,{IDEMPOTENCY_KEY_MAX}}}")


def is_id(value: str | None) -> bool:
    """Whether `value` is a request or correlation id as this service accepts them."""
    return value is not None and _ID.fullmatch(value) is not None


def request_id(value: str | None) -> str:
    """The caller's request id if it is one, else a fresh id."""
    return value if value is not None and is_id(value) else new_id()


def correlation_id(value: str | None) -> str | None:
    """The caller's correlation id if it is one, else None."""
    return value if is_id(value) else None


def traceparent(value: str | None) -> str | None:
    """A W3C `traceparent` to continue, or None (start a new trace). A later version is
    cut to the four fields version 00 has, which is what a parser of 00 reads of it."""
    if value is None:
        return None
    match = _TRACEPARENT.fullmatch(value)
    if match is None:
        return None
    version, trace_id, span_id, _flags, rest = match.groups()
    if version == "ff" or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    if version == "00":
        return None if rest is not None else value
    return value[:55]


def tracestate(value: str | None) -> str | None:
    """The W3C `tracestate` if it is well formed and within the bounds, else None."""
    if value is None or len(value) > TRACESTATE_MAX_CHARS:
        return None
    members = [member.strip(" \t") for member in value.split(",")]
    members = [member for member in members if member]
    if not members or len(members) > TRACESTATE_MAX_MEMBERS:
        return None
    keys = set()
    for member in members:
        match = _MEMBER.fullmatch(member)
        if match is None or match.group(1) in keys:
            return None
        keys.add(match.group(1))
    return ",".join(members)


class InvalidIdempotencyKey(ValueError):
    """The header is not an idempotency key (answered with 400)."""

    def __init__(self) -> None:
        super().__init__(
            f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX} printable ASCII characters"
            " without spaces"
        )


def idempotency_key(value: str | None) -> str | None:
    """The caller's `Idempotency-Key` (None if it sent none); InvalidIdempotencyKey if it
    is not one."""
    if value is None:
        return None
    if _IDEMPOTENCY_KEY.fullmatch(value) is None:
        raise InvalidIdempotencyKey
    return value
