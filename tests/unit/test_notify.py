"""The LISTEN channel's name is written into SQL as an identifier: only plain names pass."""

from __future__ import annotations

import pytest

from shared.storage.notify import channel

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("name", ["outbox_waiting", "orders_outbox_waiting", "_x1"])
def test_plain_names_are_channels(name: str) -> None:
    assert channel(name) == name


@pytest.mark.parametrize(
    "name",
    ['outbox"; DROP TABLE orders; --', "Outbox", "1outbox", "", "a b", "a\x00b", "é", "x" * 64],
)
def test_anything_else_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="not a channel name"):
        channel(name)
