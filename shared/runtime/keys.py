"""Signing keys travel as events: the user service publishes its public key set on
`users`; every other service registers `learn_keys` and keeps the set in its own
`trusted_keys` table, which its `KeyRing` (shared.runtime.auth) reads.

    events.on(learn_keys)

A retired key stays in the set, with `not_after`, until the last token it signed has
expired; a key missing from a newer set is dropped."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import JSON, column, delete, select, table
from sqlalchemy.orm import Session, sessionmaker

from shared.messaging.events import Event
from shared.runtime.auth import TrustedKey, key_from_jwk
from shared.storage.db import UtcDateTime, insert

TRUSTED_KEYS = table(
    "trusted_keys", column("kid"), column("jwk", JSON), column("not_after", UtcDateTime)
)


class PublishedKey(BaseModel):
    jwk: dict[str, Any]
    not_after: datetime | None = None


class SigningKeys(Event, type="signing-keys", topic="users", key="issuer"):
    """Consumed from `users` (published by user): the keys its tokens are signed with."""

    issuer: str
    keys: list[PublishedKey] = Field(min_length=1)


def learn_keys(session: Session, published: SigningKeys) -> None:
    """Trust exactly the published set (each key checked to be an Ed25519 public key)."""
    rows = []
    for key in published.keys:
        key_from_jwk(key.jwk)
        kid = key.jwk.get("kid")
        if not isinstance(kid, str) or not 0 < len(kid) <= 64:
            raise ValueError("a published key needs a kid of 1 to 64 characters")
        rows.append({"kid": kid, "jwk": key.jwk, "not_after": key.not_after})
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
