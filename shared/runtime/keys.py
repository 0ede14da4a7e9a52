"""Signing keys travel as events: the user service publishes its public key set on
`users`; every other service registers `learn_keys` and keeps the set in its own
`trusted_keys` table, which its `KeyRing` (shared.runtime.auth) reads.

    events.on(learn_keys)

A set is trusted only if the key-set signing key signed it: the trust anchor, an Ed25519
key pair made with the stack's credentials. The user service alone holds its private half
(`USER_KEYSET_SIGNING_KEY_FILE`); every service is given its public half out of band
(`AUTH_KEYSET_PUBLIC_KEY`) and writes it into its `trusted_key_sets` table at start. A
set must name the service's issuer, carry a valid signature over `keyset_message` and a
`version` newer than the set held, or it is refused: the handler raises, the consumer
dead-letters the event, and the trusted keys stay as they were. So no other principal that
may write a topic (a stolen service password, the redrive, an old set replayed) can make a
service trust a key, or roll its trust back.

A retired key stays in the set, with `not_after`, until the last token it signed has
expired; a key missing from a newer set is dropped."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, Field
from sqlalchemy import JSON, BigInteger, String, column, delete, select, table, update
from sqlalchemy.orm import Session, sessionmaker

from shared.messaging.events import Event
from shared.runtime.auth import TrustedKey, key_from_jwk
from shared.storage.db import UtcDateTime, insert

TRUSTED_KEYS = table(
    "trusted_keys", column("kid"), column("jwk", JSON), column("not_after", UtcDateTime)
)
TRUSTED_KEY_SETS = table(
    "trusted_key_sets",
    column("issuer", String),
    column("anchors", JSON),
    column("version", BigInteger),
)

SIGNATURE_PATTERN = r"^[A-Za-z0-9_-]{86}$"
"""An Ed25519 signature (64 bytes), base64url without padding."""
MAX_VERSION = 2**63 - 1
MAX_ANCHORS = 4
"""Anchors a service accepts at once: the current one, and the next while it is rotated."""
_ANCHOR = re.compile(r"[A-Za-z0-9_-]{43}")
_CONTEXT = b"event-driven-shop signing-keys v1\n"
"""Prefixed to what is signed, so the anchor's signature means nothing anywhere else."""


class KeySetRefused(Exception):
    """A `signing-keys` set failed a check; `str(exc)` says which."""


class PublishedKey(BaseModel):
    jwk: dict[str, Any]
    not_after: datetime | None = None


class SigningKeys(Event, type="signing-keys", topic="users", key="issuer"):
    """Consumed from `users` (published by user): the keys its tokens are signed with."""

    issuer: str
    keys: list[PublishedKey] = Field(min_length=1)
    version: int = Field(ge=1, le=MAX_VERSION)
    signature: str = Field(pattern=SIGNATURE_PATTERN)


class KeyLike(Protocol):
    """A published key, as the publisher's and the consumers' models both have it."""

    @property
    def jwk(self) -> Mapping[str, Any]: ...

    @property
    def not_after(self) -> datetime | None: ...


def keyset_message(issuer: str, version: int, keys: Sequence[KeyLike]) -> bytes:
    """What a set's signature covers: a context line, then the issuer, version and keys as
    JSON with sorted keys and each `not_after` in UTC to the microsecond. Publisher and
    consumers both build it from the values they hold, never from the bytes on the wire."""
    body = {
        "issuer": issuer,
        "version": version,
        "keys": [{"jwk": dict(key.jwk), "not_after": _instant(key.not_after)} for key in keys],
    }
    return _CONTEXT + orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def sign_keyset(
    anchor: Ed25519PrivateKey, issuer: str, version: int, keys: Sequence[KeyLike]
) -> str:
    """The detached signature of a set, base64url without padding."""
    return _b64(anchor.sign(keyset_message(issuer, version, keys)))


def anchor_text(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """An anchor as `AUTH_KEYSET_PUBLIC_KEY` writes it: base64url of the raw public key."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return _b64(raw)


def parse_anchors(text: str) -> list[str]:
    """The anchors of a setting: comma-separated base64url Ed25519 public keys (ValueError
    if any is not one, or if there are more than MAX_ANCHORS)."""
    anchors = [part.strip() for part in text.split(",") if part.strip()]
    if len(anchors) > MAX_ANCHORS:
        raise ValueError(f"at most {MAX_ANCHORS} anchors, not {len(anchors)}")
    for anchor in anchors:
        _public_key(anchor)
    return anchors


def trust_anchors(session: Session, issuer: str, anchors: Sequence[str]) -> None:
    """Trust sets of `issuer` signed by one of `anchors` (and no other issuer's sets)."""
    parse_anchors(",".join(anchors))
    session.execute(
        update(TRUSTED_KEY_SETS).where(TRUSTED_KEY_SETS.c.issuer != issuer).values(anchors=[])
    )
    statement = insert(session, TRUSTED_KEY_SETS)
    session.execute(
        statement.values(issuer=issuer, anchors=list(anchors)).on_conflict_do_update(
            index_elements=["issuer"], set_={"anchors": statement.excluded.anchors}
        )
    )


def verify_keyset(published: SigningKeys, anchors: Sequence[str], held: int | None) -> None:
    """Raise KeySetRefused unless one of `anchors` signed the set and its version is newer
    than `held` (the version of the set trusted now)."""
    if not anchors:
        raise KeySetRefused(
            f"no trust anchor for issuer {published.issuer[:64]!r}: "
            "not this service's issuer, or AUTH_KEYSET_PUBLIC_KEY unset"
        )
    signature = _unb64(published.signature)
    message = keyset_message(published.issuer, published.version, published.keys)
    if not any(_signed_by(anchor, signature, message) for anchor in anchors):
        raise KeySetRefused("the key set's signature is not the trust anchor's")
    if held is not None and published.version <= held:
        raise KeySetRefused(f"key set version {published.version} is not newer than {held}")


def learn_keys(session: Session, published: SigningKeys) -> None:
    """Trust exactly the published set, once it passed `verify_keyset` and each key is an
    Ed25519 public key with a kid; else raise and change nothing."""
    held = session.execute(
        select(TRUSTED_KEY_SETS.c.anchors, TRUSTED_KEY_SETS.c.version).where(
            TRUSTED_KEY_SETS.c.issuer == published.issuer
        )
    ).first()
    anchors = list(held.anchors or []) if held is not None else []
    verify_keyset(published, anchors, held.version if held is not None else None)
    rows = []
    for key in published.keys:
        key_from_jwk(key.jwk)
        kid = key.jwk.get("kid")
        if not isinstance(kid, str) or not 0 < len(kid) <= 64:
            raise ValueError("a published key needs a kid of 1 to 64 characters")
        rows.append({"kid": kid, "jwk": key.jwk, "not_after": key.not_after})
    newer = session.execute(
        update(TRUSTED_KEY_SETS)
        .where(TRUSTED_KEY_SETS.c.issuer == published.issuer)
        .where(
            TRUSTED_KEY_SETS.c.version.is_(None) | (TRUSTED_KEY_SETS.c.version < published.version)
        )
        .values(version=published.version)
    )
    if newer.rowcount != 1:  # type: ignore[attr-defined]  # a newer set won meanwhile
        raise KeySetRefused(f"key set version {published.version} is no longer the newest")
    store_keys(session, rows)


def store_keys(session: Session, rows: list[dict[str, Any]]) -> None:
    """Replace the trusted set with `rows` (kid, jwk, not_after)."""
    kids = [row["kid"] for row in rows]
    session.execute(delete(TRUSTED_KEYS).where(TRUSTED_KEYS.c.kid.not_in(kids)))
    statement = insert(session, TRUSTED_KEYS)
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["kid"],
            set_={"jwk": statement.excluded.jwk, "not_after": statement.excluded.not_after},
        ),
        rows,
    )


def trusted_keys(sessions: sessionmaker[Session]) -> list[TrustedKey]:
    """The keys in the service's `trusted_keys` table, for its KeyRing."""
    with sessions() as session:
        rows = session.execute(select(TRUSTED_KEYS)).all()
    return [TrustedKey(row.kid, key_from_jwk(row.jwk), row.not_after) for row in rows]


def _signed_by(anchor: str, signature: bytes, message: bytes) -> bool:
    try:
        _public_key(anchor).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def _public_key(anchor: str) -> Ed25519PublicKey:
    if not _ANCHOR.fullmatch(anchor):
        raise ValueError(
            "an anchor is the base64url (no padding) of a 32-byte Ed25519 public key: "
            f"43 characters, not {anchor[:50]!r}"
        )
    return Ed25519PublicKey.from_public_bytes(_unb64(anchor))


def _instant(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    utc = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64url") from exc
