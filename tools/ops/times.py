"""The one reader of a point in time given from outside: the command line's `--since`,
`--until` and `--to-datetime` (tools.ops.tail, tools.ops.offsets, tools.replay) and the
explorer's search form all take times through `moment`."""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime

from shared.clock import utcnow

LONGEST = 64
"""Characters at most: `2026-12-07T06:00:00.123456+01:00` is 32."""
SHAPE = re.compile(r"[0-9][0-9T:.,+\-Z ]*")
"""What an RFC 3339 / ISO 8601 time may hold (`fromisoformat` alone lets a NUL through)."""
EXAMPLE = "2026-12-07T06:00:00Z"


def moment(text: str, *, future: bool = False) -> datetime:
    """An RFC 3339 time with its zone (`2026-12-07T06:00:00Z`, `...+01:00`), in UTC; not
    before 1970 (Kafka's timestamps start there) and, unless `future`, not after now.
    Raises ValueError with a reason short enough to show, whatever `text` is."""
    shown = repr(text[:LONGEST]) + ("…" if len(text) > LONGEST else "")
    if len(text) > LONGEST or not SHAPE.fullmatch(text):
        raise ValueError(f"not an RFC 3339 time such as {EXAMPLE}: {shown}")
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not an RFC 3339 time such as {EXAMPLE}: {shown}") from None
    if when.tzinfo is None:
        raise ValueError(f"give the time's zone (Z, +01:00): {shown}")
    when = when.astimezone(UTC)
    if when.timestamp() < 0:
        raise ValueError(f"{when.isoformat()} is before 1970")
    if not future and when > utcnow():
        raise ValueError(f"{when.isoformat()} is in the future")
    return when


def past(text: str) -> datetime:
    """`moment` for argparse: a time not in the future."""
    try:
        return moment(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def any_time(text: str) -> datetime:
    """`moment` for argparse: a time, possibly in the future (an `--until`)."""
    try:
        return moment(text, future=True)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
