"""The user service's passwords, signing keys and tokens (services/user/{passwords,tokens,
api}.py) against a real SQLite database; no broker, no server, no wall-clock asserts."""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import pytest
from argon2 import PasswordHasher, Type, extract_parameters
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from services.order.main import SPEC as ORDER
from services.user import handlers, main, passwords, tokens
from services.user.api import Limits
from services.user.config import UserSettings
from services.user.keystore import Keystore, WrongKey
from services.user.main import SPEC, create_app
from services.user.models import OutboxMessage, SigningKey, User
from services.user.schemas import UserIn
from shared.messaging.outbox import row_to_envelope
from shared.messaging.unit_of_work import UnitOfWork
from shared.runtime.auth import OPERATOR, KeyRing, Principal, TokenRejected, mint
from shared.runtime.errors import answer_to
from shared.runtime.keys import (
    TRUSTED_KEY_SETS,
    SigningKeys,
    anchor_text,
    learn_keys,
    trust_anchors,
    trusted_keys,
)
from shared.runtime.limits import RateLimiter
from shared.runtime.service import ServiceSpec
from tests.unit.signing import ISSUER, TTL, Anchor, segments

pytestmark = pytest.mark.unit

PASSWORD = "correct horse battery staple"
PRODUCTION_HASHER = passwords._hasher


class CountingHasher(PasswordHasher):
    """argon2id at a test's cost, noting each hash it verifies against."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=1024, parallelism=1)
        self.verified: list[str] = []

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:  # noqa: A002
        self.verified.append(hash if isinstance(hash, str) else hash.decode())
        return super().verify(hash, password)


@pytest.fixture(autouse=True)
def hasher(monkeypatch: pytest.MonkeyPatch) -> Iterator[CountingHasher]:
    """Cheap hashes for speed (the production parameters have a test of their own), and
    a fresh dummy hash made by the same hasher."""
    counting = CountingHasher()
    monkeypatch.setattr(passwords, "_hasher", lambda: counting)
    passwords._dummy_hash.cache_clear()
    yield counting
    passwords._dummy_hash.cache_clear()


@pytest.fixture
def uow(service_uow: Callable[[ServiceSpec], UnitOfWork]) -> UnitOfWork:
    return service_uow(SPEC)


def random_email() -> str:
    return f"user-{uuid.uuid4().hex[:12]}@example.com"


def register(uow: UnitOfWork, email: str | None = None, password: str = PASSWORD) -> str:
    with uow() as unit:
        body = UserIn(name="Ann", email=email or random_email(), password=password)
        return handlers.register_user(
            unit, body.name, body.email, passwords.hash_password(body.password)
        ).id


def email_of(uow: UnitOfWork, user_id: str) -> str:
    with uow.read() as unit:
        return handlers.get_user(unit, user_id).email


ANCHOR = Anchor()
KEYSTORE = Keystore(os.urandom(32), ANCHOR.key)
"""The keys the service holds outside its database, for every test of this module."""


def start(uow: UnitOfWork) -> None:
    with uow() as unit:
        tokens.ensure_signing_key(unit, keystore=KEYSTORE, issuer=ISSUER, ttl=TTL)


def issue(uow: UnitOfWork, email: str, password: str = PASSWORD) -> str:
    with uow.read() as unit:
        return tokens.issue_token(unit, email, password, keystore=KEYSTORE, issuer=ISSUER, ttl=TTL)


def keyring(uow: UnitOfWork) -> KeyRing:
    """What another process of the service (or a consumer of its keys) would trust."""
    return KeyRing(lambda: trusted_keys(uow.sessions), reload_every=0)


def published_sets(uow: UnitOfWork) -> list[dict[str, Any]]:
    """The payload of every `signing-keys` event in the outbox, oldest first."""
    with uow.read() as unit:
        rows = unit.session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))
        events = [(row.topic, row_to_envelope(row)) for row in rows]
    found = []
    for topic, event in events:
        if event.type == "signing-keys":
            assert (topic, event.key) == ("users", ISSUER)
            found.append(event.json())
    return found


def signing_keys(uow: UnitOfWork) -> dict[str, datetime | None]:
    """kid -> retired_at of each private key the service holds."""
    with uow.read() as unit:
        return {k.kid: k.retired_at for k in unit.session.scalars(select(SigningKey))}


# Passwords


def test_register_stores_only_an_argon2id_hash_of_the_password(uow: UnitOfWork) -> None:
    user_id = register(uow)

    with uow.read() as unit:
        user = unit.session.get(User, user_id)
        assert user is not None
        stored = {c.key: str(getattr(user, c.key)) for c in User.__table__.columns}
        outbox = [row.payload for row in unit.session.scalars(select(OutboxMessage))]
    assert stored["password_hash"].startswith("$argon2id$")
    assert PasswordHasher().verify(stored["password_hash"], PASSWORD)
    assert not [column for column, value in stored.items() if PASSWORD in value]
    assert outbox and not [payload for payload in outbox if PASSWORD.encode() in payload]
    assert stored["scopes"] == "", "a registered user is no operator"


def test_the_same_password_is_hashed_with_its_own_salt_per_account(uow: UnitOfWork) -> None:
    first, second = register(uow), register(uow)

    with uow.read() as unit:
        hashes = {unit.session.get(User, u).password_hash for u in (first, second)}  # type: ignore[union-attr]
    assert len(hashes) == 2


def test_production_hashes_are_argon2id_at_owasps_recommended_cost() -> None:
    parameters = extract_parameters(PRODUCTION_HASHER().hash(PASSWORD))

    assert parameters.type is Type.ID
    assert (parameters.time_cost, parameters.memory_cost, parameters.parallelism) == (
        2,
        19 * 1024,
        1,
    )


# Tokens for e-mail and password


def test_the_right_password_gets_a_token_for_the_account(uow: UnitOfWork) -> None:
    start(uow)
    user_id = register(uow)
    email = email_of(uow, user_id)

    token = issue(uow, f"  {email.upper()} ")

    assert keyring(uow).verify(token, ISSUER) == Principal(user_id, frozenset())
    header, claims, _ = segments(token)
    assert header["kid"] == next(iter(signing_keys(uow)))
    assert claims["exp"] - claims["iat"] == TTL.total_seconds()
    assert PASSWORD not in str(claims)


def test_a_wrong_password_and_an_unknown_email_are_the_same_bad_credentials(
    uow: UnitOfWork,
) -> None:
    start(uow)
    email = email_of(uow, register(uow))
    refusals = []

    for who, password in ((email, "not the password"), (random_email(), PASSWORD)):
        with pytest.raises(tokens.BadCredentials) as caught:
            issue(uow, who, password)
        refusals.append(caught.value)

    wrong, unknown = refusals
    assert answer_to(wrong) == answer_to(unknown) == (401, {"WWW-Authenticate": "Bearer"})
    assert wrong.message == unknown.message == "incorrect e-mail or password"


def test_an_unknown_email_verifies_a_hash_as_a_known_one_does(
    uow: UnitOfWork, hasher: CountingHasher
) -> None:
    """So the time a refusal takes does not tell whether the e-mail has an account."""
    start(uow)
    email = email_of(uow, register(uow))
    attempts = {
        "right password": (email, PASSWORD),
        "wrong password": (email, "not the password"),
        "unknown e-mail": (random_email(), PASSWORD),
    }
    verified: dict[str, list[str]] = {}

    for name, (who, password) in attempts.items():
        hasher.verified.clear()
        try:
            issue(uow, who, password)
        except tokens.BadCredentials:
            pass
        verified[name] = list(hasher.verified)

    assert {name: len(hashes) for name, hashes in verified.items()} == dict.fromkeys(attempts, 1)
    costs = {name: extract_parameters(hashes[0]) for name, hashes in verified.items()}
    assert costs["unknown e-mail"] == costs["right password"], "the dummy hash costs the same"


def test_an_account_without_a_password_cannot_sign_in_and_costs_the_same(
    uow: UnitOfWork, hasher: CountingHasher
) -> None:
    start(uow)
    user_id = register(uow)
    with uow() as unit:
        unit.session.execute(update(User).where(User.id == user_id).values(password_hash=""))
    hasher.verified.clear()

    for password in (PASSWORD, ""):
        with pytest.raises(tokens.BadCredentials):
            issue(uow, email_of(uow, user_id), password)

    assert len(hasher.verified) == 2


# Signing keys


def test_ensure_signing_key_publishes_the_set_through_the_outbox_and_trusts_it(
    uow: UnitOfWork,
) -> None:
    start(uow)

    [kid] = signing_keys(uow)
    [event] = published_sets(uow)
    assert event["issuer"] == ISSUER
    [key] = event["keys"]
    assert key["not_after"] is None
    assert key["jwk"]["kid"] == kid
    assert set(key["jwk"]) == {"kty", "crv", "x", "kid", "alg", "use"}, "no private part"
    with uow.read() as unit:
        assert tokens.trusted_jwks(unit) == [key["jwk"]]
    assert {k.kid for k in trusted_keys(uow.sessions)} == {kid}


def test_a_restart_keeps_the_signing_key_and_publishes_the_set_again(uow: UnitOfWork) -> None:
    start(uow)
    start(uow)

    assert len(signing_keys(uow)) == 1
    first, second = published_sets(uow)
    assert first["keys"] == second["keys"]
    assert second["version"] > first["version"], "a newer set, so consumers take it"


# Signed, versioned sets, and private keys sealed at rest


def test_every_published_set_is_signed_by_the_anchor_and_a_consumer_trusts_it(
    uow: UnitOfWork, service_uow: Callable[[ServiceSpec], UnitOfWork]
) -> None:
    """Through the wire: the publisher's model to JSON to a consumer's model, so both
    sides build the same signed message, a retired key's not_after included."""
    start(uow)
    with uow() as unit:
        tokens.rotate_keys(unit, keystore=KEYSTORE, issuer=ISSUER, ttl=TTL)
    order = service_uow(ORDER)
    with order() as unit:
        trust_anchors(unit.session, ISSUER, [ANCHOR.public])

    for published in published_sets(uow):
        with order() as unit:
            learn_keys(unit.session, SigningKeys.model_validate_json(json.dumps(published)))

    retired, current = published_sets(uow)[-1]["keys"]
    assert retired["not_after"] is not None and current["not_after"] is None
    assert {k.kid for k in trusted_keys(order.sessions)} == set(signing_keys(uow))


def test_versions_grow_with_every_set_even_within_one_millisecond(uow: UnitOfWork) -> None:
    start(uow)
    ahead = int(datetime.now(UTC).timestamp() * 1000) + 10**9  # a clock that went back
    with uow() as unit:
        unit.session.execute(
            update(TRUSTED_KEY_SETS)
            .where(TRUSTED_KEY_SETS.c.issuer == ISSUER)
            .values(version=ahead)
        )
    for _ in range(3):
        with uow() as unit:
            tokens.publish_keys(unit, keystore=KEYSTORE, issuer=ISSUER, ttl=TTL)

    versions = [published["version"] for published in published_sets(uow)]
    assert versions[1:] == [ahead + 1, ahead + 2, ahead + 3]


def test_private_keys_are_stored_sealed_bound_to_their_kid(uow: UnitOfWork) -> None:
    start(uow)
    with uow() as unit:
        tokens.rotate_keys(unit, keystore=KEYSTORE, issuer=ISSUER, ttl=TTL)

    with uow.read() as unit:
        stored = {k.kid: k.private_key for k in unit.session.scalars(select(SigningKey))}
    assert len(stored) == 2
    for kid, sealed in stored.items():
        assert sealed.startswith("v1:") and "PRIVATE KEY" not in sealed
        assert b"PRIVATE KEY" in KEYSTORE.open(kid, sealed)
    (first, one), (second, other) = stored.items()
    with pytest.raises(WrongKey):
        KEYSTORE.open(second, one)  # another kid: the associated data differs
    with pytest.raises(WrongKey):
        Keystore(os.urandom(32), ANCHOR.key).open(first, one)


@pytest.mark.parametrize(
    "stored",
    [
        "v1:AAAAAAAAAAAAAAAA:AAAA",
        "v1:\x00:\x00",
        "v1:" + "A" * 16 + ":" + "A" * 10_000,
    ],
)
def test_a_tampered_sealed_key_does_not_open(stored: str) -> None:
    with pytest.raises(WrongKey):
        KEYSTORE.open("k-1", stored)


@pytest.mark.parametrize(
    "stored", ["v2:AAAA:AAAA", "v1::", "v1:AAAA", "-----BEGIN PRIVATE KEY-----", ""]
)
def test_a_key_not_stored_sealed_is_not_opened(stored: str) -> None:
    with pytest.raises(ValueError, match="not stored sealed"):
        KEYSTORE.open("k-1", stored)


def plaintext_key(uow: UnitOfWork) -> tuple[str, Ed25519PrivateKey]:
    """A signing key stored in clear, as the service stored them before they were sealed."""
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    kid = f"k-{uuid.uuid4().hex[:8]}"
    with uow() as unit:
        unit.session.add(SigningKey(kid=kid, private_key=pem, created_at=datetime.now(UTC)))
    return kid, private


def test_a_key_stored_in_clear_is_sealed_at_start_and_signs_on(uow: UnitOfWork) -> None:
    kid, private = plaintext_key(uow)
    email = email_of(uow, register(uow))
    older_token = mint(private, kid, "someone", issuer=ISSUER, ttl=TTL)

    start(uow)

    assert list(signing_keys(uow)) == [kid], "the same key, not a new one"
    with uow.read() as unit:
        [stored] = unit.session.scalars(select(SigningKey.private_key)).all()
    assert stored.startswith("v1:") and "PRIVATE KEY" not in stored
    assert KEYSTORE.private_key(kid, stored).private_bytes_raw() == private.private_bytes_raw()
    token = issue(uow, email)
    assert segments(token)[0]["kid"] == kid
    assert keyring(uow).verify(older_token, ISSUER).subject == "someone", "tokens live on"
    start(uow)  # again: nothing left to seal
    with uow.read() as unit:
        assert unit.session.scalars(select(SigningKey.private_key)).all() == [stored]


def test_a_start_with_the_wrong_encryption_key_fails_clearly_and_changes_nothing(
    uow: UnitOfWork,
) -> None:
    start(uow)
    with uow.read() as unit:
        before = unit.session.scalars(select(SigningKey.private_key)).all()
    wrong = Keystore(os.urandom(32), ANCHOR.key)
    runtime = SimpleNamespace(
        settings=UserSettings(), uow=uow, keys=KeyRing(lambda: trusted_keys(uow.sessions))
    )

    with pytest.raises(RuntimeError, match="USER_KEY_ENCRYPTION_KEY_FILE is not the key"):
        main.start(runtime, wrong)  # type: ignore[arg-type]

    with uow.read() as unit:
        assert unit.session.scalars(select(SigningKey.private_key)).all() == before
    assert len(published_sets(uow)) == 1, "nothing published"


def test_rotation_signs_with_a_new_key_and_keeps_the_old_until_its_tokens_expire(
    uow: UnitOfWork,
) -> None:
    start(uow)
    email = email_of(uow, register(uow))
    [old] = signing_keys(uow)
    old_token = issue(uow, email)

    with uow() as unit:
        new = tokens.rotate_keys(unit, keystore=KEYSTORE, issuer=ISSUER, ttl=TTL)

    new_token = issue(uow, email)
    assert new != old
    assert segments(new_token)[0]["kid"] == new
    retired_at = signing_keys(uow)[old]
    assert retired_at is not None and signing_keys(uow)[new] is None
    not_after = retired_at + TTL
    latest = published_sets(uow)[-1]
    assert {k["jwk"]["kid"]: k["not_after"] for k in latest["keys"]} == {
        old: not_after.isoformat().replace("+00:00", "Z"),
        new: None,
    }
    assert {k.kid: k.not_after for k in trusted_keys(uow.sessions)} == {
        old: not_after,
        new: None,
    }
    keys = keyring(uow)
    assert keys.verify(old_token, ISSUER).subject == keys.verify(new_token, ISSUER).subject
    with pytest.raises(TokenRejected, match="retired key"):
        keys.verify(old_token, ISSUER, now=not_after)


def test_a_new_key_signs_only_once_the_others_had_time_to_learn_it(uow: UnitOfWork) -> None:
    propagation = timedelta(seconds=10)
    start(uow)
    email = email_of(uow, register(uow))
    [old] = signing_keys(uow)
    with uow() as unit:  # the key in use was made long ago
        unit.session.execute(
            update(SigningKey)
            .where(SigningKey.kid == old)
            .values(created_at=datetime.now(UTC) - timedelta(days=30))
        )
        new = tokens.rotate_keys(
            unit, keystore=KEYSTORE, issuer=ISSUER, ttl=TTL, propagation=propagation
        )

    def kid_now() -> str:
        with uow.read() as unit:
            token = tokens.issue_token(
                unit,
                email,
                PASSWORD,
                keystore=KEYSTORE,
                issuer=ISSUER,
                ttl=TTL,
                propagation=propagation,
            )
        return str(segments(token)[0]["kid"])

    assert kid_now() == old, "the retired key signs while the new one propagates"
    retired_at = signing_keys(uow)[old]
    assert retired_at is not None
    trusted = {k.kid: k.not_after for k in trusted_keys(uow.sessions)}
    assert trusted == {old: retired_at + propagation + TTL, new: None}

    with uow() as unit:  # as if the new key was made longer ago than the propagation time
        unit.session.execute(
            update(SigningKey)
            .where(SigningKey.kid == new)
            .values(created_at=datetime.now(UTC) - propagation)
        )
    assert kid_now() == new


def test_a_retired_key_is_dropped_by_a_publish_after_its_tokens_expired(
    uow: UnitOfWork,
) -> None:
    start(uow)
    [old] = signing_keys(uow)
    with uow() as unit:
        new = tokens.rotate_keys(unit, keystore=KEYSTORE, issuer=ISSUER, ttl=TTL)
    long_ago = datetime.now(UTC) - TTL - timedelta(seconds=1)
    with uow() as unit:  # as if the rotation was longer ago than a token lives
        unit.session.execute(
            update(SigningKey).where(SigningKey.kid == old).values(retired_at=long_ago)
        )

    with uow() as unit:
        tokens.publish_keys(unit, keystore=KEYSTORE, issuer=ISSUER, ttl=TTL)

    assert [k["jwk"]["kid"] for k in published_sets(uow)[-1]["keys"]] == [new]
    assert {k.kid for k in trusted_keys(uow.sessions)} == {new}
    assert list(signing_keys(uow)) == [new], "its private key is deleted"


def test_two_rotations_keep_both_retired_keys_while_their_tokens_live(uow: UnitOfWork) -> None:
    start(uow)
    kids = list(signing_keys(uow))
    for _ in range(2):
        with uow() as unit:
            kids.append(tokens.rotate_keys(unit, keystore=KEYSTORE, issuer=ISSUER, ttl=TTL))

    latest = published_sets(uow)[-1]["keys"]
    assert [k["jwk"]["kid"] for k in latest] == kids
    assert [k["not_after"] is None for k in latest] == [False, False, True]


# The operator account


def test_ensure_operator_makes_an_operator_who_signs_in_with_that_password(
    uow: UnitOfWork,
) -> None:
    start(uow)
    email = random_email()

    with uow() as unit:
        tokens.ensure_operator(unit, email, "first operator password")

    principal = keyring(uow).verify(issue(uow, email, "first operator password"), ISSUER)
    assert principal.scopes == frozenset({OPERATOR})


def test_ensure_operator_again_updates_the_password_and_keeps_one_account(
    uow: UnitOfWork,
) -> None:
    start(uow)
    email = random_email()
    with uow() as unit:
        tokens.ensure_operator(unit, email, "first operator password")

    with uow() as unit:
        tokens.ensure_operator(unit, email, "second operator password")

    with pytest.raises(tokens.BadCredentials):
        issue(uow, email, "first operator password")
    token = issue(uow, email, "second operator password")
    assert keyring(uow).verify(token, ISSUER).scopes == frozenset({OPERATOR})
    with uow.read() as unit:
        assert len(unit.session.scalars(select(User).where(User.email == email)).all()) == 1


# Over HTTP: the user service's app with its runtime replaced, no lifespan


@pytest.fixture
def app(uow: UnitOfWork) -> FastAPI:
    start(uow)
    settings = UserSettings()
    app = create_app(settings)
    app.state.keystore = KEYSTORE  # what the lifespan would read
    app.state.runtime = SimpleNamespace(
        uow=uow,
        settings=settings,
        keys=KeyRing(lambda: trusted_keys(uow.sessions)),
        per_address=RateLimiter(settings.rate_per_address, 2 * settings.rate_per_address),
    )
    return app


def sign_in(client: TestClient, email: str, password: str = PASSWORD) -> Any:
    return client.post("/token", data={"username": email, "password": password})


def test_register_then_sign_in_then_read_me(app: FastAPI) -> None:
    client = TestClient(app)
    email = random_email()

    registered = client.post("/users", json={"name": "Ann", "email": email, "password": PASSWORD})
    signed_in = sign_in(client, email)
    token = signed_in.json()["access_token"]
    me = client.get("/users/me", headers={"Authorization": f"Bearer {token}"})

    assert registered.status_code == 201
    assert "password" not in registered.json()
    assert signed_in.status_code == 200
    assert signed_in.json()["token_type"] == "bearer"
    assert signed_in.json()["expires_in"] == UserSettings().token_ttl_minutes * 60
    assert me.status_code == 200
    assert me.json() == registered.json()


def test_a_failed_sign_in_is_401_with_a_bearer_challenge(app: FastAPI) -> None:
    client = TestClient(app)
    email = random_email()
    client.post("/users", json={"name": "Ann", "email": email, "password": PASSWORD})

    for answer in (sign_in(client, email, "not the password"), sign_in(client, random_email())):
        assert answer.status_code == 401
        assert answer.headers["WWW-Authenticate"] == "Bearer"
        assert answer.json() == {"detail": "incorrect e-mail or password"}


def from_address(app: FastAPI, address: str) -> TestClient:
    """A client whose requests come from `address`."""
    return TestClient(app, client=(address, 40_000))


def limited(app: FastAPI, **settings: Any) -> FastAPI:
    """`app` with the user service's limits built from these settings."""
    app.state.user_limits = Limits.of(UserSettings(**settings))
    return app


def test_failed_sign_ins_are_limited_per_account_and_address(app: FastAPI) -> None:
    limited(app, token_failure_rate=0.01, token_failure_burst=2)
    client = from_address(app, "10.0.0.1")
    email = random_email()

    answers = [sign_in(client, email, "guess") for _ in range(3)]
    other = sign_in(client, random_email(), "guess")

    assert [a.status_code for a in answers] == [401, 401, 429]
    assert int(answers[2].headers["Retry-After"]) >= 1
    assert other.status_code == 401, "another account has its own bucket"
    assert sign_in(client, email.upper(), "guess").status_code == 429, "the same account"
    assert sign_in(client, f"  {email} ", "guess").status_code == 429, "the same account"


def test_the_owner_signs_in_while_someone_elsewhere_guesses_the_password(app: FastAPI) -> None:
    limited(app, token_failure_rate=0.01, token_failure_burst=3)
    email = random_email()
    TestClient(app).post("/users", json={"name": "Op", "email": email, "password": PASSWORD})
    attacker, owner = from_address(app, "203.0.113.66"), from_address(app, "198.51.100.7")

    guesses = [sign_in(attacker, email, f"guess-{n}").status_code for n in range(10)]
    signed_in = [sign_in(owner, email).status_code for _ in range(5)]

    assert guesses == [401] * 3 + [429] * 7
    assert signed_in == [200] * 5
    assert sign_in(attacker, email, PASSWORD).status_code == 429, "even the right password"


def test_successful_sign_ins_use_no_failure_allowance(app: FastAPI) -> None:
    limited(app, token_failure_rate=0.01, token_failure_burst=2)
    client = from_address(app, "10.0.0.1")
    email = random_email()
    client.post("/users", json={"name": "Ann", "email": email, "password": PASSWORD})

    assert [sign_in(client, email).status_code for _ in range(6)] == [200] * 6
    assert [sign_in(client, email, "typo").status_code for _ in range(3)] == [401, 401, 429]


def test_every_sign_in_counts_against_the_address_first(app: FastAPI) -> None:
    limited(app, token_rate_per_address=0.01, token_address_burst=5)
    client = from_address(app, "10.0.0.1")
    failures = app.state.user_limits.failures

    answers = [sign_in(client, f"user-{n}@example.com", "guess") for n in range(25)]

    assert [a.status_code for a in answers] == [401] * 5 + [429] * 20
    assert len(failures) == 5, "a refused attempt makes no per-account bucket"
    assert sign_in(from_address(app, "10.0.0.2"), random_email(), "guess").status_code == 401


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("username", "a" * 245 + "@example.com"),
        ("username", "u" * 65_000),
        ("password", "p" * 1025),
    ],
    ids=["255-character e-mail", "64 KiB username", "1025-character password"],
)
def test_an_oversized_username_or_password_is_422_before_any_limit_or_hash(
    app: FastAPI, hasher: CountingHasher, field: str, value: str
) -> None:
    limits = limited(app).state.user_limits
    form = {"username": random_email(), "password": "guess", field: value}

    answer = from_address(app, "10.0.0.1").post("/token", data=form)

    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["body", field]
    assert (len(limits.sign_ins), len(limits.failures)) == (0, 0)
    assert hasher.verified == []


def test_the_longest_e_mail_and_a_long_password_are_still_checked(app: FastAPI) -> None:
    client = from_address(app, "10.0.0.1")

    longest = sign_in(client, "a" * 242 + "@example.com", "p" * 1024)

    assert longest.status_code == 401


def test_hundreds_of_long_usernames_from_one_address_leave_a_few_small_buckets(
    app: FastAPI,
) -> None:
    """/token could be made to keep a 64 KiB key per username, 100,000 of them; now a
    key is a 16-byte digest, and only attempts the address limit admits make one."""
    limits = limited(app, token_rate_per_address=0.01, token_address_burst=20).state.user_limits
    client = from_address(app, "10.0.0.1")
    answers = [sign_in(client, f"{n:05d}" + "x" * 249, "guess") for n in range(300)]

    assert [a.status_code for a in answers] == [401] * 20 + [429] * 280
    assert len(limits.failures) == 20
    assert len(limits.sign_ins) == 1


def test_registering_is_limited_per_address_tightly(app: FastAPI) -> None:
    limits = limited(app, register_rate_per_address=0.01, register_burst=3).state.user_limits
    flooder, other = from_address(app, "10.0.0.1"), from_address(app, "10.0.0.2")

    def register_from(client: TestClient) -> int:
        body = {"name": "Ann", "email": random_email(), "password": PASSWORD}
        status: int = client.post("/users", json=body).status_code
        return status

    assert [register_from(flooder) for _ in range(5)] == [201, 201, 201, 429, 429]
    assert register_from(other) == 201
    assert len(limits.registrations) == 2


@contextmanager
def registration_hashing(slots: passwords.HashingSlots) -> Iterator[None]:
    """While inside, a registration holds one of `slots`' hashing slots (from a thread)."""
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with slots.hashing_new():
            holding.set()
            release.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    assert holding.wait(30)
    try:
        yield
    finally:
        release.set()
        thread.join(30)


def test_registrations_leave_a_hashing_slot_to_sign_ins() -> None:
    slots = passwords.HashingSlots(slots=2, wait=0.01)
    checked = threading.Event()

    with registration_hashing(slots):
        with pytest.raises(passwords.HashingBusy), slots.hashing_new():
            pass
        with slots.checking():  # a sign-in's password check gets the slot kept for it
            checked.set()

    assert checked.is_set()
    with slots.hashing_new():  # and the registrations' slot is free again
        pass


def test_a_registration_that_finds_no_hashing_slot_is_503_with_retry_after(
    app: FastAPI, uow: UnitOfWork, monkeypatch: pytest.MonkeyPatch
) -> None:
    slots = passwords.HashingSlots(slots=2, wait=0.01)
    monkeypatch.setattr(passwords, "_slots", slots)
    email, waiting = random_email(), random_email()
    client = TestClient(app)
    client.post("/users", json={"name": "Ann", "email": email, "password": PASSWORD})

    with registration_hashing(slots):
        busy = client.post("/users", json={"name": "Bo", "email": waiting, "password": PASSWORD})
        signed_in = sign_in(client, email)

    assert (busy.status_code, busy.headers["Retry-After"]) == (503, "1")
    assert busy.json() == {"detail": "too many sign-ups at once: try again shortly"}
    assert signed_in.status_code == 200
    with uow.read() as unit:
        assert unit.session.scalar(select(User).where(User.email == waiting)) is None
    again = client.post("/users", json={"name": "Bo", "email": waiting, "password": PASSWORD})
    assert again.status_code == 201


def test_the_default_limits_are_the_documented_ones() -> None:
    limits = Limits.of(UserSettings())

    assert (limits.sign_ins.rate, limits.sign_ins.burst) == (10, 50)
    assert (limits.failures.rate, limits.failures.burst) == (0.1, 10)
    assert (limits.registrations.rate, limits.registrations.burst) == (1, 10)


def test_a_token_of_an_account_the_service_does_not_have_is_401(
    app: FastAPI, uow: UnitOfWork
) -> None:
    with uow.read() as unit:
        [key] = unit.session.scalars(select(SigningKey)).all()
    private = KEYSTORE.private_key(key.kid, key.private_key)

    token = mint(private, key.kid, "no-such-user", issuer=app.state.settings.auth_issuer, ttl=TTL)

    answer = TestClient(app).get("/users/me", headers={"Authorization": f"Bearer {token}"})

    assert answer.status_code == 401
    assert 'error_description="unknown user"' in answer.headers["WWW-Authenticate"]


def test_a_user_reads_only_their_own_account_and_notifications(app: FastAPI) -> None:
    client = TestClient(app)
    ids, headers = [], []
    for _ in range(2):
        email = random_email()
        body = {"name": "Ann", "email": email, "password": PASSWORD}
        ids.append(client.post("/users", json=body).json()["id"])
        token = sign_in(client, email).json()["access_token"]
        headers.append({"Authorization": f"Bearer {token}"})

    assert client.get(f"/users/{ids[0]}", headers=headers[0]).status_code == 200
    assert client.get(f"/users/{ids[1]}", headers=headers[0]).status_code == 404
    assert client.get(f"/users/{ids[1]}/notifications", headers=headers[0]).status_code == 404
    assert client.get(f"/users/{ids[1]}/notifications", headers=headers[1]).json() == []


def test_only_an_operator_rotates_the_keys(app: FastAPI, uow: UnitOfWork) -> None:
    client = TestClient(app)
    email, operator_email = random_email(), random_email()
    client.post("/users", json={"name": "Ann", "email": email, "password": PASSWORD})
    with uow() as unit:
        tokens.ensure_operator(unit, operator_email, "operator password")
    before = set(signing_keys(uow))

    def rotate(token: str) -> int:
        answer = client.post("/keys/rotate", headers={"Authorization": f"Bearer {token}"})
        status: int = answer.status_code
        return status

    customer = rotate(sign_in(client, email).json()["access_token"])
    assert set(signing_keys(uow)) == before
    operator = rotate(sign_in(client, operator_email, "operator password").json()["access_token"])

    assert (customer, operator) == (403, 204)
    assert len(set(signing_keys(uow)) - before) == 1
    jwks = client.get("/.well-known/jwks.json").json()["keys"]
    assert {k["kid"] for k in jwks} == set(signing_keys(uow))


def test_logs_of_sign_in_and_of_bad_tokens_never_hold_a_token_or_a_password(
    app: FastAPI, caplog: pytest.LogCaptureFixture
) -> None:
    client = TestClient(app)
    email = random_email()
    caplog.set_level(logging.DEBUG)

    client.post("/users", json={"name": "Ann", "email": email, "password": PASSWORD})
    token = sign_in(client, email).json()["access_token"]
    sign_in(client, email, "a wrong password that must not be logged")
    header, _, signature = token.split(".")
    bad = [
        f"{header}.e30.{signature}",
        token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB"),
        "garbage." + signature,
    ]
    for bad_token in bad:
        answer = client.get("/users/me", headers={"Authorization": f"Bearer {bad_token}"})
        assert answer.status_code == 401

    assert caplog.records, "something was logged, so the check below means something"
    logged = caplog.text + "".join(repr(record.args) for record in caplog.records)
    for secret in (PASSWORD, "a wrong password that must not be logged", token, signature, *bad):
        assert secret not in logged


# The keystore's files, as the service reads them at start


def key_files(folder: Path, encryption: bytes | None = None, signing: bytes | None = None) -> Any:
    """The two files the service reads (fresh, valid keys unless given), and their paths."""
    encryption_file, signing_file = folder / "key-encryption-key", folder / "keyset.pem"
    encryption_file.write_bytes(
        encryption
        if encryption is not None
        else base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=") + b"\n"
    )
    signing_file.write_bytes(
        signing
        if signing is not None
        else ANCHOR.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(encryption_file), str(signing_file)


def test_the_keystore_reads_both_keys_and_checks_the_anchor(tmp_path: Path) -> None:
    encryption, signing = key_files(tmp_path)

    keystore = Keystore.from_files(encryption, signing, f"{Anchor().public},{ANCHOR.public}")

    assert anchor_text(keystore.keyset_signer) == ANCHOR.public
    assert keystore.open("k-1", keystore.seal("k-1", b"pem")) == b"pem"
    with pytest.raises(RuntimeError, match="not among AUTH_KEYSET_PUBLIC_KEY"):
        Keystore.from_files(encryption, signing, Anchor().public)


def rsa_pem() -> bytes:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"encryption": b"AAAA"}, "USER_KEY_ENCRYPTION_KEY_FILE must hold 32 random bytes"),
        ({"encryption": b"A" * 42 + b"\x00"}, "USER_KEY_ENCRYPTION_KEY_FILE must hold 32"),
        ({"encryption": b"A" * 100_000}, "USER_KEY_ENCRYPTION_KEY_FILE is too large"),
        ({"encryption": b"\xff" * 43}, "USER_KEY_ENCRYPTION_KEY_FILE must hold 32"),
        ({"signing": b"not a key"}, "USER_KEYSET_SIGNING_KEY_FILE is not a PEM private key"),
        ({"signing": b""}, "USER_KEYSET_SIGNING_KEY_FILE is not a PEM private key"),
        ({"signing": "rsa"}, "USER_KEYSET_SIGNING_KEY_FILE is not an Ed25519 key"),
    ],
)
def test_a_malformed_key_file_stops_the_start_naming_its_setting(
    tmp_path: Path, files: dict[str, Any], message: str
) -> None:
    if files.get("signing") == "rsa":
        files["signing"] = rsa_pem()
    encryption, signing = key_files(tmp_path, **files)

    with pytest.raises(RuntimeError, match=message):
        Keystore.from_files(encryption, signing)


def test_a_missing_or_unreadable_key_file_stops_the_start(tmp_path: Path) -> None:
    encryption, signing = key_files(tmp_path)

    with pytest.raises(RuntimeError, match="USER_KEY_ENCRYPTION_KEY_FILE is not set"):
        Keystore.from_files("", signing)
    with pytest.raises(RuntimeError, match="USER_KEYSET_SIGNING_KEY_FILE is not set"):
        Keystore.from_files(encryption, "")
    with pytest.raises(RuntimeError, match="USER_KEYSET_SIGNING_KEY_FILE unreadable"):
        Keystore.from_files(encryption, str(tmp_path / "nowhere.pem"))
    with pytest.raises(RuntimeError, match="AUTH_KEYSET_PUBLIC_KEY"):
        Keystore.from_files(encryption, signing, "not an anchor")
