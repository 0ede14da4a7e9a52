"""Signing keys, key sets and bearer tokens for unit tests: what the user service would
issue, made here so a test needs no user service (shared.runtime.auth and .keys do the
signing)."""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.runtime.auth import KeyRing, TrustedKey, mint, public_jwk
from shared.runtime.keys import PublishedKey, SigningKeys, anchor_text, sign_keyset

ISSUER = "test-shop"
TTL = timedelta(minutes=15)


def random_kid() -> str:
    return f"k-{uuid.uuid4().hex[:12]}"


@dataclass
class Signer:
    """One Ed25519 key pair and its kid."""

    kid: str = field(default_factory=random_kid)
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)

    def trusted(self, not_after: datetime | None = None) -> TrustedKey:
        return TrustedKey(self.kid, self.key.public_key(), not_after)

    def token(
        self,
        subject: str = "user-1",
        *,
        scopes: frozenset[str] = frozenset(),
        issuer: str = ISSUER,
        ttl: timedelta = TTL,
        now: datetime | None = None,
    ) -> str:
        return mint(self.key, self.kid, subject, issuer=issuer, ttl=ttl, scopes=scopes, now=now)


@dataclass
class Anchor:
    """A trust anchor: the key pair that signs `signing-keys` sets, made fresh per test."""

    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    issued: int = 1_000
    """The version of the last set `signed` made."""

    @property
    def public(self) -> str:
        """As `AUTH_KEYSET_PUBLIC_KEY` holds it."""
        return anchor_text(self.key)

    def signed(
        self,
        *keys: tuple[Signer, datetime | None],
        issuer: str = ISSUER,
        version: int | None = None,
    ) -> SigningKeys:
        """A set of `keys` (signer, not_after), signed with the next version (or `version`)."""
        if version is None:
            self.issued += 1
            version = self.issued
        published = [
            PublishedKey(jwk=public_jwk(s.kid, s.key.public_key()), not_after=not_after)
            for s, not_after in keys
        ]
        signature = sign_keyset(self.key, issuer, version, published)
        return SigningKeys(issuer=issuer, keys=published, version=version, signature=signature)


def ring(*keys: TrustedKey) -> tuple[KeyRing, list[TrustedKey]]:
    """A KeyRing over a list the test may change (as the `trusted_keys` table changes);
    `refresh()` reads it again."""
    held = list(keys)
    return KeyRing(lambda: list(held)), held


def b64url(data: bytes | dict[str, Any]) -> str:
    """Base64url without padding, of bytes or of a JSON object (RFC 7515)."""
    raw = json.dumps(data, separators=(",", ":")).encode() if isinstance(data, dict) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def segments(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """The header and claims of a compact JWS, decoded without checking, and its signature."""
    header, claims, signature = token.split(".")
    return _json(header), _json(claims), signature


def _json(segment: str) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    )
    return decoded


def claims_now(**overrides: Any) -> dict[str, Any]:
    """Claims as `mint` writes them, issued now for TTL; an override of None leaves it out."""
    now = datetime.now(UTC)
    claims: dict[str, Any] = {
        "sub": "user-1",
        "scope": "",
        "iss": ISSUER,
        "iat": int(now.timestamp()),
        "exp": int((now + TTL).timestamp()),
    }
    claims.update(overrides)
    return {key: value for key, value in claims.items() if value is not None}
