"""The client's address behind a proxy the service trusts, and only then.

A service sees the proxy's address as its peer; the proxy names the client in
`X-Forwarded-For`. Anyone can send that header, so it is read only when the peer is one
of the configured proxies (`FORWARDED_ALLOW_IPS`: addresses or networks; empty: nobody).
The proxies of this project (tools/local/haproxy.py, deploy/haproxy) overwrite the header
with the address they were connected from, so it holds one address; a chain of trusted
proxies that append is read from the right, the first address that is not a trusted
proxy being the client. A header that holds anything but addresses is ignored.

This replaces uvicorn's own handling (`--proxy-headers`, on by default and trusting
127.0.0.1), which `serve` (`python -m services NAME`) switches off."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(text: str) -> tuple[Network, ...]:
    """`"10.0.0.5, 192.168.0.0/24"` → networks; ValueError for anything else (`*` too:
    say `0.0.0.0/0, ::/0` to trust every peer)."""
    networks = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"not an IP address or network: {item!r}") from None
    return tuple(networks)


class ForwardedFor:
    """Sets the ASGI `client` to the address in `X-Forwarded-For` when the peer is a
    trusted proxy (its port becomes 0: the proxy does not say it)."""

    def __init__(self, app: ASGIApp, trusted: Sequence[Network]) -> None:
        self.app = app
        self.trusted = tuple(trusted)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.trusted and scope["type"] in ("http", "websocket"):
            peer = scope.get("client")
            if peer and self._trusts(_address(peer[0])):
                forwarded = [v for k, v in scope["headers"] if k == b"x-forwarded-for"]
                client = self.client(forwarded) if forwarded else None
                if client is not None:
                    scope = {**scope, "client": (client, 0)}
        await self.app(scope, receive, send)

    def client(self, headers: Iterable[bytes]) -> str | None:
        """The client's address in these `X-Forwarded-For` values, or None if they hold
        anything but addresses."""
        entries = [e.strip() for h in headers for e in h.decode("latin-1").split(",")]
        addresses = [_address(entry) for entry in entries]
        if not addresses or any(a is None for a in addresses):
            return None
        for address in reversed(addresses):
            if not self._trusts(address):
                return str(address)
        return str(addresses[0])

    def _trusts(self, address: Address | None) -> bool:
        return address is not None and any(address in network for network in self.trusted)


def _address(text: str) -> Address | None:
    if len(text) > 45:  # the longest IPv6 address
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None
