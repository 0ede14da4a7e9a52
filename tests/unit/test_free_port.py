"""tests/conftest.py's `free_port`: the ports it hands out in a session are distinct, even
when the system offers a port twice (it does, once the first taker closed it)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import tests.conftest as conftest

pytestmark = pytest.mark.unit


class Offered:
    """A socket whose bind to port 0 gets the next port of `offers`."""

    offers: Iterator[int] = iter(())

    def __init__(self, *_: Any) -> None:
        self.port = 0

    def __enter__(self) -> Offered:
        return self

    def __exit__(self, *_: Any) -> None:
        pass

    def bind(self, address: tuple[str, int]) -> None:
        self.port = next(self.offers)

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)


def test_a_port_offered_twice_is_handed_out_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conftest, "GIVEN_PORTS", set())
    monkeypatch.setattr(conftest, "_worker", lambda: (0, 1))
    monkeypatch.setattr(Offered, "offers", iter([41001, 41001, 41002, 41001, 41003]))
    monkeypatch.setattr(conftest.socket, "socket", Offered)
    assert [conftest.free_port() for _ in range(3)] == [41001, 41002, 41003]


def test_the_ports_of_a_session_are_distinct() -> None:
    ports = [conftest.free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)


def test_each_xdist_worker_hands_out_only_the_ports_its_index_owns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(conftest, "GIVEN_PORTS", set())
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
    monkeypatch.setattr(Offered, "offers", iter([41000, 41002, 41004, 41006, 41008, 41010]))
    monkeypatch.setattr(conftest.socket, "socket", Offered)
    assert [conftest.free_port() for _ in range(2)] == [41000, 41006]
