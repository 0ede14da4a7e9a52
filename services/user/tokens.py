"""Signing keys and access tokens. Every function takes a Unit and never commits.

Every key change publishes the whole public set as `signing-keys`, signed by the trust
anchor with a version newer than the last, and the service trusts that same set itself. A
new key signs only once the other services have had time to learn it (`propagation`);
until then the key it replaces goes on signing, and stays trusted `propagation` + the
token lifetime after it was retired. Private keys are stored sealed by the `Keystore`."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import case, func, select, text, update

from services.user.events import PublishedKey, SigningKeys
from services.user.handlers import register_user
from services.user.keystore import SEALED, Keystore
from services.user.models import SigningKey, User
from services.user.passwords import hash_password, password_matches
from shared.errors import NotAuthenticated
from shared.messaging.unit_of_work import Unit
from shared.runtime.auth import OPERATOR, mint, public_jwk
from shared.runtime.keys import TRUSTED_KEY_SETS, TRUSTED_KEYS, sign_keyset, store_keys
from shared.storage.db import insert, is_postgres


class BadCredentials(NotAuthenticated):
    def __init__(self) -> None:
        super().__init__("incorrect e-mail or password")


def issue_token(
    unit: Unit,
    email: str,
    password: str,
    *,
    keystore: Keystore,
    issuer: str,
    ttl: timedelta,
    propagation: timedelta = timedelta(0),
) -> str:
    """An access token for the account with this e-mail and password, or BadCredentials."""
    user = unit.session.scalar(select(User).where(User.email == email.strip().lower()))
    if not password_matches(user.password_hash if user else None, password) or user is None:
        raise BadCredentials
    key = _signing_key(unit, propagation)
    private = keystore.private_key(key.kid, key.private_key)
    scopes = frozenset(user.scopes.split())
    return mint(private, key.kid, user.id, issuer=issuer, ttl=ttl, scopes=scopes)


def ensure_signing_key(
    unit: Unit,
    *,
    keystore: Keystore,
    issuer: str,
    ttl: timedelta,
    propagation: timedelta = timedelta(0),
) -> None:
    """Seal any key still stored in clear, make a key if there is none that signs, and
    publish (and trust) the current set: run at every start, so a service that joins
    later learns the keys even after older `signing-keys` events have left the topic.

    Raises WrongKey if a stored key does not open with the keystore's key."""
    if is_postgres(unit.session.get_bind()):  # several processes may start at once
        unit.session.execute(text("SELECT pg_advisory_xact_lock(hashtext('signing_keys'))"))
    version = _next_version(unit, issuer)  # before any key row, as rotate_keys: no deadlock
    seal_stored_keys(unit, keystore)
    if _current(unit) is None:
        _new_key(unit, keystore)
    publish_keys(
        unit, keystore=keystore, issuer=issuer, ttl=ttl, propagation=propagation, version=version
    )


def seal_stored_keys(unit: Unit, keystore: Keystore) -> int:
    """Seal the private keys stored in clear (PEM, as before they were sealed); check that
    every sealed one opens. Returns how many were sealed now."""
    sealed = 0
    for key in unit.session.scalars(select(SigningKey).order_by(SigningKey.created_at)):
        if key.private_key.startswith(f"{SEALED}:"):
            keystore.private_key(key.kid, key.private_key)
            continue
        private = serialization.load_pem_private_key(key.private_key.encode(), password=None)
        if not isinstance(private, Ed25519PrivateKey):
            raise ValueError(f"signing key {key.kid} is not an Ed25519 key")
        key.private_key = keystore.seal(key.kid, key.private_key.encode())
        sealed += 1
    unit.session.flush()
    return sealed


def rotate_keys(
    unit: Unit,
    *,
    keystore: Keystore,
    issuer: str,
    ttl: timedelta,
    propagation: timedelta = timedelta(0),
) -> str:
    """Retire the signing key for a new one; tokens it signed stay valid until they expire."""
    version = _next_version(unit, issuer)  # first: concurrent rotations take turns
    now = datetime.now(UTC)
    for key in unit.session.scalars(select(SigningKey).where(SigningKey.retired_at.is_(None))):
        key.retired_at = now
    kid = _new_key(unit, keystore)
    publish_keys(
        unit, keystore=keystore, issuer=issuer, ttl=ttl, propagation=propagation, version=version
    )
    return kid


def publish_keys(
    unit: Unit,
    *,
    keystore: Keystore,
    issuer: str,
    ttl: timedelta,
    propagation: timedelta = timedelta(0),
    version: int | None = None,
) -> SigningKeys:
    """Emit the public set, signed with the next version (unless given one taken by
    `_next_version` in this transaction): the signing key, and retired keys whose tokens
    may still be alive (older ones are deleted). The service trusts the same set."""
    version = version or _next_version(unit, issuer)
    now = datetime.now(UTC)
    published = []
    for key in unit.session.scalars(select(SigningKey).order_by(SigningKey.created_at)):
        not_after = key.retired_at + propagation + ttl if key.retired_at else None
        if not_after is not None and not_after <= now:
            unit.session.delete(key)
            continue
        private = keystore.private_key(key.kid, key.private_key)
        published.append(
            PublishedKey(jwk=public_jwk(key.kid, private.public_key()), not_after=not_after)
        )
    signature = sign_keyset(keystore.keyset_signer, issuer, version, published)
    keys = SigningKeys(issuer=issuer, keys=published, version=version, signature=signature)
    unit.session.flush()
    store_keys(
        unit.session,
        [{"kid": k.jwk["kid"], "jwk": k.jwk, "not_after": k.not_after} for k in published],
    )
    unit.outbox.emit(keys)
    return keys


def trusted_jwks(unit: Unit) -> list[dict[str, object]]:
    """The public set as the service trusts it: a JWK Set's `keys`."""
    return [dict(row.jwk) for row in unit.session.execute(select(TRUSTED_KEYS.c.jwk))]


def ensure_operator(unit: Unit, email: str, password: str) -> None:
    """The operator account signs in with `password` (created on the first start)."""
    if is_postgres(unit.session.get_bind()):  # several instances may start at once
        unit.session.execute(text("SELECT pg_advisory_xact_lock(hashtext('operator'))"))
    email = email.strip().lower()
    user = unit.session.scalar(select(User).where(User.email == email))
    if user is None:
        user = register_user(unit, "Operator", email, hash_password(password))
    elif not password_matches(user.password_hash, password):
        user.password_hash = hash_password(password)
    user.scopes = OPERATOR


def _current(unit: Unit) -> SigningKey | None:
    return unit.session.scalar(
        select(SigningKey)
        .where(SigningKey.retired_at.is_(None))
        .order_by(SigningKey.created_at.desc())
        .limit(1)
    )


def _signing_key(unit: Unit, propagation: timedelta) -> SigningKey:
    """The newest key that every service has had `propagation` to learn; the newest of
    all while none is that old (the very first start)."""
    keys = list(unit.session.scalars(select(SigningKey).order_by(SigningKey.created_at.desc())))
    if not keys:
        raise RuntimeError("no signing key: the service has not started")
    seasoned = datetime.now(UTC) - propagation
    return next((key for key in keys if key.created_at <= seasoned), keys[0])


def _new_key(unit: Unit, keystore: Keystore) -> str:
    private = Ed25519PrivateKey.generate()
    kid = f"k-{datetime.now(UTC):%Y%m%d}-{secrets.token_hex(4)}"
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    sealed = keystore.seal(kid, pem)
    unit.session.add(SigningKey(kid=kid, private_key=sealed, created_at=datetime.now(UTC)))
    unit.session.flush()
    return kid


def _next_version(unit: Unit, issuer: str) -> int:
    """The version of the next set: now in milliseconds, or one more than the last if that
    is not older. The row stays locked until the transaction ends, so sets are versioned
    (and published) in the order they commit."""
    sets = TRUSTED_KEY_SETS.c
    statement = insert(unit.session, TRUSTED_KEY_SETS)
    unit.session.execute(
        statement.values(issuer=issuer, anchors=[], version=0).on_conflict_do_nothing(
            index_elements=["issuer"]
        )
    )
    now = int(datetime.now(UTC).timestamp() * 1000)
    last = func.coalesce(sets.version, 0)
    newest = case((last < now, now), else_=last + 1)
    return int(
        unit.session.execute(
            update(TRUSTED_KEY_SETS)
            .where(sets.issuer == issuer)
            .values(version=newest)
            .returning(sets.version)
        ).scalar_one()
    )
