"""Key sets and sealed signing keys on each database the services run on (SQLite and
PostgreSQL): a consumer's `trusted_key_sets` version only grows, the user service seals
keys stored in clear at start, and sets published at once get distinct versions in the
order they commit."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select

from services.order.main import SPEC as ORDER
from services.user import tokens
from services.user.keystore import Keystore, WrongKey
from services.user.main import SPEC as USER
from services.user.models import OutboxMessage, SigningKey
from shared.messaging.outbox import row_to_envelope
from shared.messaging.unit_of_work import UnitOfWork
from shared.runtime.keys import (
    TRUSTED_KEY_SETS,
    KeySetRefused,
    SigningKeys,
    learn_keys,
    trust_anchors,
    trusted_keys,
    verify_keyset,
)
from shared.runtime.service import ServiceSpec
from shared.storage.db import make_engine, make_sessions
from shared.storage.migrations import upgrade
from tests.unit.signing import ISSUER, TTL, Anchor, Signer

pytestmark = pytest.mark.integration


def migrated(database_url: str, spec: ServiceSpec) -> Iterator[UnitOfWork]:
    engine = make_engine(database_url)
    upgrade(engine, spec.migrations)
    try:
        yield UnitOfWork(make_sessions(engine), spec.outbox_model, f"/services/{spec.name}")
    finally:
        engine.dispose()


@pytest.fixture
def order(database_url: str) -> Iterator[UnitOfWork]:
    yield from migrated(database_url, ORDER)


@pytest.fixture
def user(database_url: str) -> Iterator[UnitOfWork]:
    yield from migrated(database_url, USER)


def version_held(uow: UnitOfWork) -> int | None:
    with uow.read() as unit:
        return unit.session.scalar(
            select(TRUSTED_KEY_SETS.c.version).where(TRUSTED_KEY_SETS.c.issuer == ISSUER)
        )


def test_a_consumer_takes_only_newer_sets_its_anchor_signed(order: UnitOfWork) -> None:
    anchor, first, second = Anchor(issued=2**62), Signer(), Signer()
    with order() as unit:
        trust_anchors(unit.session, ISSUER, [anchor.public])
    old = anchor.signed((first, None))
    new = anchor.signed((first, datetime.now(UTC) + TTL), (second, None))
    for keys in (old, new):
        with order() as unit:
            learn_keys(unit.session, keys)

    refused = [old, Anchor().signed((Signer(), None), version=2**63 - 1)]
    for keys in refused:
        with pytest.raises(KeySetRefused), order() as unit:
            learn_keys(unit.session, keys)

    assert {key.kid for key in trusted_keys(order.sessions)} == {first.kid, second.kid}
    assert version_held(order) == new.version, "a BIGINT: versions are milliseconds"


def plaintext_key(uow: UnitOfWork) -> str:
    """A signing key stored as PEM, as the service stored them before they were sealed."""
    pem = (
        Ed25519PrivateKey.generate()
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    kid = "k-in-clear"
    with uow() as unit:
        unit.session.add(SigningKey(kid=kid, private_key=pem, created_at=datetime.now(UTC)))
    return kid


def stored_keys(uow: UnitOfWork) -> dict[str, str]:
    with uow.read() as unit:
        return {key.kid: key.private_key for key in unit.session.scalars(select(SigningKey))}


def test_keys_stored_in_clear_are_sealed_at_start_and_a_wrong_key_changes_nothing(
    user: UnitOfWork,
) -> None:
    keystore = Keystore(os.urandom(32), Anchor().key)
    kid = plaintext_key(user)

    with user() as unit:
        tokens.ensure_signing_key(unit, keystore=keystore, issuer=ISSUER, ttl=TTL)

    sealed = stored_keys(user)
    assert list(sealed) == [kid] and sealed[kid].startswith("v1:")
    assert b"PRIVATE KEY" in keystore.open(kid, sealed[kid])
    with pytest.raises(WrongKey), user() as unit:
        wrong = Keystore(os.urandom(32), keystore.keyset_signer)
        tokens.ensure_signing_key(unit, keystore=wrong, issuer=ISSUER, ttl=TTL)
    assert stored_keys(user) == sealed


def test_sets_published_at_once_get_distinct_versions_in_commit_order(user: UnitOfWork) -> None:
    anchor = Anchor()
    keystore = Keystore(os.urandom(32), anchor.key)
    with user() as unit:
        tokens.ensure_signing_key(unit, keystore=keystore, issuer=ISSUER, ttl=TTL)
    together = threading.Barrier(4)
    failures: list[BaseException] = []

    def rotate() -> None:
        together.wait()
        try:
            with user() as unit:
                tokens.rotate_keys(
                    unit, keystore=keystore, issuer=ISSUER, ttl=TTL, propagation=timedelta(0)
                )
        except BaseException as exc:
            failures.append(exc)

    rotations = [threading.Thread(target=rotate) for _ in range(4)]
    for thread in rotations:
        thread.start()
    for thread in rotations:
        thread.join(60)

    assert failures == []
    with user.read() as unit:
        rows = unit.session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)).all()
    events = [row_to_envelope(row) for row in rows]
    sets = [SigningKeys.model_validate_json(e.data) for e in events if e.type == "signing-keys"]
    versions = [keys.version for keys in sets]
    assert len(versions) == 5 and versions == sorted(set(versions)), "outbox order = version order"
    held = None
    for keys in sets:  # as a consumer takes them, in the order the relay publishes them
        verify_keyset(keys, [anchor.public], held)
        held = keys.version
