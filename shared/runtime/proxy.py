"""The client's address behind a proxy the service trusts, and only then.

A service sees the proxy's address as its peer; the proxy names the client in
`X-Forwarded-For`. Anyone can send that header, so it is read only when the peer is one
of the configured proxies (`FORWARDED_ALLOW_IPS`: addresses or networks; empty: nobody).
The proxies of this project (tools/local/haproxy.py, deploy/haproxy) overwrite the header
with the address they were connected from, so it holds one address; a chain of trusted
proxies that append is read from the right, the first address that is not a trusted
proxy being the client. A header that holds anything but addresses is ignored.

This replaces uvicorn's own handling (`--proxy-headers`, on by default and trusting
127.0.0.1), which `serve` (`python -m services NAME`) switches off. `ServiceMiddleware`
(shared.runtime.middleware) applies it to every request."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from starlette.types import Scope

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


class TrustedProxies:
    """The proxies whose `X-Forwarded-For` names the client. `rewrite` sets the ASGI
    `client` to that address when the peer is one of them (its port becomes 0: the proxy
    does not say it)."""

    def __init__(self, trusted: Sequence[Network]) -> None:
        self.trusted = tuple(trusted)

    def rewrite(self, scope: Scope, forwarded: Sequence[bytes] | None = None) -> Scope:
        """`scope` with the client the trusted proxy names (the same scope otherwise).
        `forwarded`: the request's `X-Forwarded-For` values, when already read."""
        if not self.trusted:
            return scope
        peer = scope.get("client")
        if not peer or not self._trusts(_address(peer[0])):
            return scope
        if forwarded is None:
            forwarded = [v for k, v in scope["headers"] if k == b"x-forwarded-for"]
        client = self.client(forwarded) if forwarded else None
        return scope if client is None else {**scope, "client": (client, 0)}

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
