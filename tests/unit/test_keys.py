"""Signing keys learnt from `signing-keys` events (shared.runtime.keys) into a service's
own `trusted_keys` table, against a real SQLite database of each consuming service."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from jwt.algorithms import OKPAlgorithm
from jwt.exceptions import InvalidKeyError
from pydantic import ValidationError
from sqlalchemy import select

from services.inventory.consumers import events as inventory_events
from services.inventory.main import SPEC as INVENTORY
from services.order.consumers import events as order_events
from services.order.main import SPEC as ORDER
from services.product.consumers import events as product_events
from services.product.main import SPEC as PRODUCT
from shared.messaging.router import EventRouter
from shared.messaging.unit_of_work import UnitOfWork
from shared.runtime.auth import KeyRing, TokenRejected, public_jwk
from shared.runtime.keys import (
    TRUSTED_KEYS,
    PublishedKey,
    SigningKeys,
    learn_keys,
    store_keys,
    trusted_keys,
)
from shared.runtime.service import ServiceSpec
from tests.unit.signing import ISSUER, Signer

pytestmark = pytest.mark.unit

LATER = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture
def uow(service_uow: Callable[[ServiceSpec], UnitOfWork]) -> UnitOfWork:
    return service_uow(ORDER)


def published(*keys: tuple[Signer, datetime | None]) -> SigningKeys:
    return SigningKeys(
        issuer=ISSUER,
        keys=[
            PublishedKey(jwk=public_jwk(s.kid, s.key.public_key()), not_after=not_after)
            for s, not_after in keys
        ],
    )


def learn(uow: UnitOfWork, keys: SigningKeys) -> None:
    with uow() as unit:
        learn_keys(unit.session, keys)


def trusted(uow: UnitOfWork) -> dict[str, datetime | None]:
    """kid -> not_after of every key the service trusts, as its KeyRing reads them."""
    return {key.kid: key.not_after for key in trusted_keys(uow.sessions)}


def test_the_trusted_set_becomes_exactly_the_published_set(uow: UnitOfWork) -> None:
    old, current, newer = Signer(), Signer(), Signer()
    learn(uow, published((old, None), (current, None)))
    assert trusted(uow) == {old.kid: None, current.kid: None}

    learn(uow, published((current, LATER), (newer, None)))

    assert trusted(uow) == {current.kid: LATER, newer.kid: None}, "old is left out: dropped"


def test_the_stored_keys_verify_their_tokens_and_nothing_else(uow: UnitOfWork) -> None:
    dropped, kept = Signer(), Signer()
    learn(uow, published((dropped, None)))
    learn(uow, published((kept, None)))
    keys = KeyRing(lambda: trusted_keys(uow.sessions))

    assert keys.verify(kept.token("user-1"), ISSUER).subject == "user-1"
    with pytest.raises(TokenRejected, match="unknown key"):
        keys.verify(dropped.token(), ISSUER)


def test_learning_the_same_set_again_changes_nothing(uow: UnitOfWork) -> None:
    signer = Signer()
    keys = published((signer, LATER))

    learn(uow, keys)
    learn(uow, keys)

    assert trusted(uow) == {signer.kid: LATER}
    with uow.read() as unit:
        [jwk] = unit.session.scalars(select(TRUSTED_KEYS.c.jwk)).all()
    assert jwk == public_jwk(signer.kid, signer.key.public_key())


def test_a_not_after_with_an_offset_is_kept_as_the_same_instant_in_utc(uow: UnitOfWork) -> None:
    signer = Signer()
    jwk = public_jwk(signer.kid, signer.key.public_key())
    keys = {"issuer": ISSUER, "keys": [{"jwk": jwk, "not_after": "2030-01-02T05:04:05+02:00"}]}

    learn(uow, SigningKeys.model_validate(keys))

    [key] = trusted_keys(uow.sessions)
    assert key.not_after == LATER
    assert key.not_after is not None and key.not_after.utcoffset() == timedelta(0)


def bad_jwk(kind: str, signer: Signer) -> dict[str, Any]:
    jwk = public_jwk(signer.kid, signer.key.public_key())
    bad: dict[str, dict[str, Any]] = {
        "rsa": {"kty": "RSA", "n": "sXch", "e": "AQAB", "kid": signer.kid},
        "private": {**OKPAlgorithm.to_jwk(signer.key, as_dict=True), "kid": signer.kid},
        "short-x": {**jwk, "x": "AAAA"},
        "no-x": {k: v for k, v in jwk.items() if k != "x"},
        "no-kid": {k: v for k, v in jwk.items() if k != "kid"},
        "empty-kid": {**jwk, "kid": ""},
        "long-kid": {**jwk, "kid": "k" * 65},
        "number-kid": {**jwk, "kid": 7},
    }
    return bad[kind]


NOT_ED25519 = (ValueError, "Ed25519")
BAD_KEY = (InvalidKeyError, "(?i)key|parameter")
BAD_KID = (ValueError, "kid of 1 to 64 characters")


@pytest.mark.parametrize(
    ("kind", "raised"),
    [
        ("rsa", NOT_ED25519),
        ("private", NOT_ED25519),
        ("short-x", BAD_KEY),
        ("no-x", BAD_KEY),
        ("no-kid", BAD_KID),
        ("empty-kid", BAD_KID),
        ("long-kid", BAD_KID),
        ("number-kid", BAD_KID),
    ],
)
def test_a_set_with_a_bad_key_raises_and_keeps_the_trusted_set(
    uow: UnitOfWork, kind: str, raised: tuple[type[Exception], str]
) -> None:
    """Raising is what makes the consumer retry and then dead-letter the event."""
    known, good, bad = Signer(), Signer(), Signer()
    learn(uow, published((known, None)))
    keys = SigningKeys(
        issuer=ISSUER,
        keys=[
            PublishedKey(jwk=public_jwk(good.kid, good.key.public_key())),
            PublishedKey(jwk=bad_jwk(kind, bad)),
        ],
    )
    error, message = raised

    with pytest.raises(error, match=message):
        learn(uow, keys)

    assert trusted(uow) == {known.kid: None}, "nothing of the bad set is trusted"


def test_an_empty_set_is_refused_before_it_could_untrust_every_key() -> None:
    with pytest.raises(ValidationError):
        SigningKeys.model_validate({"issuer": ISSUER, "keys": []})


def test_store_keys_replaces_the_set(uow: UnitOfWork) -> None:
    first, second = Signer(), Signer()
    rows = [
        {"kid": s.kid, "jwk": public_jwk(s.kid, s.key.public_key()), "not_after": None}
        for s in (first, second)
    ]
    with uow() as unit:
        store_keys(unit.session, rows)
    with uow() as unit:
        store_keys(unit.session, [{**rows[1], "not_after": LATER}])

    assert trusted(uow) == {second.kid: LATER}


@pytest.mark.parametrize(
    ("spec", "router"),
    [(ORDER, order_events), (INVENTORY, inventory_events), (PRODUCT, product_events)],
    ids=["order", "inventory", "product"],
)
def test_each_consuming_service_learns_keys_delivered_through_its_router(
    service_uow: Callable[[ServiceSpec], UnitOfWork], spec: ServiceSpec, router: EventRouter
) -> None:
    uow = service_uow(spec)
    old, new = Signer(), Signer()

    with uow() as unit:
        router.deliver(unit, published((old, None)), published((old, LATER), (new, None)))

    assert trusted(uow) == {old.kid: LATER, new.kid: None}
    keys = KeyRing(lambda: trusted_keys(uow.sessions))
    assert keys.verify(new.token("user-3"), ISSUER).subject == "user-3"
