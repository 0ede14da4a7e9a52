"""The client's address (shared.runtime.proxy): read from `X-Forwarded-For` only when the
peer is a configured proxy, and only if the header holds addresses."""

from __future__ import annotations

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from pydantic import ValidationError

from services.order.config import OrderSettings
from shared.runtime import http
from shared.runtime.proxy import parse_networks
from shared.runtime.settings import ServiceSettings

pytestmark = pytest.mark.unit

PROXY = "127.0.0.2"


def app_seen_from(peer: str, trusted: str = "") -> TestClient:
    """A service's HTTP plumbing trusting `trusted`, called from `peer`: `/client`
    answers the address the limits would key on."""
    app = FastAPI()
    http.install(app, max_body_bytes=1024, trusted_proxies=parse_networks(trusted))

    @app.get("/client")
    def client(request: Request) -> str:
        assert request.client is not None
        return request.client.host

    return TestClient(app, client=(peer, 50_000))


def seen(client: TestClient, *forwarded: str | bytes) -> str:
    headers = [("x-forwarded-for", value) for value in forwarded]
    answer = client.get("/client", headers=headers)
    assert answer.status_code == 200
    return str(answer.json())


def test_by_default_nobody_is_trusted_and_a_forged_header_changes_nothing() -> None:
    client = app_seen_from("127.0.0.1")

    assert seen(client) == "127.0.0.1"
    assert seen(client, "203.0.113.7") == "127.0.0.1"
    assert ServiceSettings().trusted_proxies == ()


def test_a_client_that_is_not_the_proxy_cannot_choose_its_address() -> None:
    client = app_seen_from("127.0.0.1", trusted=PROXY)

    for forged in ("203.0.113.7", PROXY, f"203.0.113.7, {PROXY}", "::1"):
        assert seen(client, forged) == "127.0.0.1", forged


def test_behind_the_trusted_proxy_the_forwarded_address_is_the_client() -> None:
    client = app_seen_from(PROXY, trusted=PROXY)

    assert seen(client, "198.51.100.4") == "198.51.100.4"
    assert seen(client, "2001:db8::1") == "2001:db8::1"
    assert seen(client) == PROXY, "no header: the proxy itself"


def test_a_chain_is_read_from_the_right_up_to_the_first_untrusted_address() -> None:
    client = app_seen_from("10.0.0.1", trusted="10.0.0.0/24")

    assert seen(client, "203.0.113.7, 198.51.100.4, 10.0.0.9") == "198.51.100.4"
    assert seen(client, "203.0.113.7", "198.51.100.4") == "198.51.100.4", "two headers"
    assert seen(client, "10.0.0.8, 10.0.0.9") == "10.0.0.8", "every hop trusted"


@pytest.mark.parametrize(
    "forwarded",
    [
        b"",
        b"unknown",
        b"198.51.100.4:8080",
        b"[2001:db8::1]:443",
        b"198.51.100.4, nonsense",
        b"1" * 10_000,
        b"198.51.100.4\x00",
        "198.51.100.\u0664".encode(),
        b"198.51.100.4;drop",
        b" , ",
    ],
    ids=lambda v: repr(v[:16]),
)
def test_a_header_holding_anything_but_addresses_is_ignored(forwarded: bytes) -> None:
    client = app_seen_from(PROXY, trusted=PROXY)

    assert seen(client, forwarded) == PROXY


@pytest.mark.parametrize("text", ["*", "localhost", "127.0.0.1/40", "10.0.0.1,,nope", "1" * 100])
def test_only_addresses_and_networks_can_be_trusted(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match="not an IP address or network"):
        parse_networks(text)
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", text)
    with pytest.raises(ValidationError):
        OrderSettings()


def test_the_setting_is_read_from_forwarded_allow_ips(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "10.201.55.10, 192.168.0.0/24")

    assert [str(n) for n in OrderSettings().trusted_proxies] == [
        "10.201.55.10/32",
        "192.168.0.0/24",
    ]
