"""Signing keys learnt from `signing-keys` events (shared.runtime.keys) into a service's
own `trusted_keys` table, against a real SQLite database of each consuming service: only
a set its trust anchor signed, for its issuer, newer than the set it holds."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
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
    TRUSTED_KEY_SETS,
    TRUSTED_KEYS,
    KeySetRefused,
    PublishedKey,
    SigningKeys,
    keyset_message,
    learn_keys,
    parse_anchors,
    sign_keyset,
    store_keys,
    trust_anchors,
    trusted_keys,
)
from shared.runtime.service import ServiceSpec
from tests.helpers import deliver
from tests.unit.signing import ISSUER, Anchor, Signer

pytestmark = pytest.mark.unit

LATER = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture
def anchor() -> Anchor:
    return Anchor()


def anchored(uow: UnitOfWork, anchor: Anchor) -> UnitOfWork:
    """The service trusts sets of ISSUER that `anchor` signed, as at its start."""
    with uow() as unit:
        trust_anchors(unit.session, ISSUER, [anchor.public])
    return uow


@pytest.fixture
def uow(service_uow: Callable[[ServiceSpec], UnitOfWork], anchor: Anchor) -> UnitOfWork:
    return anchored(service_uow(ORDER), anchor)


def learn(uow: UnitOfWork, keys: SigningKeys) -> None:
    with uow() as unit:
        learn_keys(unit.session, keys)


def trusted(uow: UnitOfWork) -> dict[str, datetime | None]:
    """kid -> not_after of every key the service trusts, as its KeyRing reads them."""
    return {key.kid: key.not_after for key in trusted_keys(uow.sessions)}


def held_version(uow: UnitOfWork, issuer: str = ISSUER) -> int | None:
    with uow.read() as unit:
        return unit.session.scalar(
            select(TRUSTED_KEY_SETS.c.version).where(TRUSTED_KEY_SETS.c.issuer == issuer)
        )


def test_the_trusted_set_becomes_exactly_the_published_set(uow: UnitOfWork, anchor: Anchor) -> None:
    old, current, newer = Signer(), Signer(), Signer()
    learn(uow, anchor.signed((old, None), (current, None)))
    assert trusted(uow) == {old.kid: None, current.kid: None}

    learn(uow, anchor.signed((current, LATER), (newer, None)))

    assert trusted(uow) == {current.kid: LATER, newer.kid: None}, "old is left out: dropped"
    assert held_version(uow) == anchor.issued


def test_the_stored_keys_verify_their_tokens_and_nothing_else(
    uow: UnitOfWork, anchor: Anchor
) -> None:
    dropped, kept = Signer(), Signer()
    learn(uow, anchor.signed((dropped, None)))
    learn(uow, anchor.signed((kept, None)))
    keys = KeyRing(lambda: trusted_keys(uow.sessions))

    assert keys.verify(kept.token("user-1"), ISSUER).subject == "user-1"
    with pytest.raises(TokenRejected, match="unknown key"):
        keys.verify(dropped.token(), ISSUER)


def test_the_same_set_again_is_refused_and_changes_nothing(uow: UnitOfWork, anchor: Anchor) -> None:
    """A redelivery is dropped by its event id before it gets here; the same set under
    another id is a replay."""
    signer = Signer()
    keys = anchor.signed((signer, LATER))

    learn(uow, keys)
    with pytest.raises(KeySetRefused, match="not newer"):
        learn(uow, keys)

    assert trusted(uow) == {signer.kid: LATER}
    with uow.read() as unit:
        [jwk] = unit.session.scalars(select(TRUSTED_KEYS.c.jwk)).all()
    assert jwk == public_jwk(signer.kid, signer.key.public_key())


def test_an_older_genuine_set_replayed_does_not_roll_trust_back(
    uow: UnitOfWork, anchor: Anchor
) -> None:
    leaked, fresh = Signer(), Signer()
    before_rotation = anchor.signed((leaked, None))
    learn(uow, before_rotation)
    learn(uow, anchor.signed((leaked, LATER), (fresh, None)))
    learn(uow, anchor.signed((fresh, None)))  # the leaked key rotated out

    for replayed in (before_rotation, anchor.signed((leaked, None), version=anchor.issued)):
        with pytest.raises(KeySetRefused, match="not newer"):
            learn(uow, replayed)

    assert trusted(uow) == {fresh.kid: None}
    assert held_version(uow) == anchor.issued


def test_a_not_after_with_an_offset_is_kept_as_the_same_instant_in_utc(
    uow: UnitOfWork, anchor: Anchor
) -> None:
    signer = Signer()
    signed = anchor.signed((signer, LATER))
    jwk = public_jwk(signer.kid, signer.key.public_key())
    keys = {
        "issuer": ISSUER,
        "keys": [{"jwk": jwk, "not_after": "2030-01-02T05:04:05+02:00"}],
        "version": signed.version,
        "signature": signed.signature,
    }

    learn(uow, SigningKeys.model_validate(keys))

    [key] = trusted_keys(uow.sessions)
    assert key.not_after == LATER
    assert key.not_after is not None and key.not_after.utcoffset() == timedelta(0)


# The signature and what it covers


def test_the_signed_message_does_not_depend_on_how_the_set_was_written() -> None:
    signer = Signer()
    jwk = public_jwk(signer.kid, signer.key.public_key())
    written = [
        PublishedKey(jwk=jwk, not_after=LATER),
        PublishedKey(
            jwk=dict(reversed(jwk.items())),
            not_after=datetime(2030, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2))),
        ),
        PublishedKey(jwk=jwk, not_after=LATER.replace(tzinfo=None)),  # naive: read as UTC
    ]

    messages = {keyset_message(ISSUER, 7, [key]) for key in written}

    [message] = messages
    context, body = message.split(b"\n", 1)
    assert context == b"event-driven-shop signing-keys v1"
    assert json.loads(body) == {
        "issuer": ISSUER,
        "keys": [{"jwk": jwk, "not_after": "2030-01-02T03:04:05.000000Z"}],
        "version": 7,
    }
    assert body == json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()


def test_the_signed_message_changes_with_each_thing_it_covers() -> None:
    one, other = Signer(), Signer()
    key = PublishedKey(jwk=public_jwk(one.kid, one.key.public_key()))
    base = keyset_message(ISSUER, 7, [key])

    variants = [
        keyset_message("another-issuer", 7, [key]),
        keyset_message(ISSUER, 8, [key]),
        keyset_message(ISSUER, 7, [PublishedKey(jwk=key.jwk, not_after=LATER)]),
        keyset_message(ISSUER, 7, [PublishedKey(jwk={**key.jwk, "kid": other.kid})]),
        keyset_message(ISSUER, 7, [key, key]),
    ]

    assert base not in variants and len(set(variants)) == len(variants)


def tampered(keys: SigningKeys, kind: str, attacker: Signer) -> SigningKeys:
    """`keys` with one thing changed after it was signed (the signature kept)."""
    attackers = PublishedKey(jwk=public_jwk(attacker.kid, attacker.key.public_key()))
    changes: dict[str, dict[str, Any]] = {
        "key swapped": {"keys": [attackers]},
        "key added": {"keys": [*keys.keys, attackers]},
        "not_after moved": {"keys": [PublishedKey(jwk=keys.keys[0].jwk, not_after=LATER)]},
        "version raised": {"version": keys.version + 10**6},
        "issuer changed": {"issuer": "another-issuer"},
    }
    return keys.model_copy(update=changes[kind])


@pytest.mark.parametrize(
    "kind",
    ["key swapped", "key added", "not_after moved", "version raised", "issuer changed"],
)
def test_a_set_changed_after_it_was_signed_is_refused_and_trust_stays(
    uow: UnitOfWork, anchor: Anchor, kind: str
) -> None:
    known, attacker = Signer(), Signer()
    learn(uow, anchor.signed((known, None)))
    held = held_version(uow)

    with pytest.raises(KeySetRefused):
        learn(uow, tampered(anchor.signed((known, None)), kind, attacker))

    assert trusted(uow) == {known.kid: None}
    assert held_version(uow) == held


def test_a_set_signed_by_any_other_key_is_refused(uow: UnitOfWork, anchor: Anchor) -> None:
    """The attack of issue 17: a set in the right shape, signed by the attacker's key."""
    attacker = Signer()
    forged = Anchor(key=attacker.key, issued=10**12).signed((attacker, None))

    with pytest.raises(KeySetRefused, match="signature is not the trust anchor's"):
        learn(uow, forged)

    assert trusted(uow) == {}


def test_a_set_of_another_issuer_is_refused_even_when_the_anchor_signed_it(
    uow: UnitOfWork, anchor: Anchor
) -> None:
    signer = Signer()

    with pytest.raises(KeySetRefused, match="no trust anchor for issuer 'someone-else'"):
        learn(uow, anchor.signed((signer, None), issuer="someone-else"))

    assert trusted(uow) == {}


def test_without_an_anchor_no_set_is_trusted(
    service_uow: Callable[[ServiceSpec], UnitOfWork], anchor: Anchor
) -> None:
    uow = service_uow(ORDER)  # no trust_anchors: AUTH_KEYSET_PUBLIC_KEY unset

    with pytest.raises(KeySetRefused, match="AUTH_KEYSET_PUBLIC_KEY unset"):
        learn(uow, anchor.signed((Signer(), None)))

    assert trusted(uow) == {}


def test_a_restart_with_a_new_anchor_trusts_it_and_keeps_the_version(
    uow: UnitOfWork, anchor: Anchor
) -> None:
    """Rotating the anchor: both while every service learns the new one, then the new one."""
    learn(uow, anchor.signed((Signer(), None)))
    successor = Anchor(issued=anchor.issued)
    with uow() as unit:
        trust_anchors(unit.session, ISSUER, [anchor.public, successor.public])
    learn(uow, successor.signed((Signer(), None)))
    with uow() as unit:
        trust_anchors(unit.session, ISSUER, [successor.public])

    with pytest.raises(KeySetRefused, match="signature"):
        learn(uow, anchor.signed((Signer(), None), version=successor.issued + 5))
    last = Signer()
    learn(uow, successor.signed((last, None)))
    assert trusted(uow) == {last.kid: None}
    assert held_version(uow) == successor.issued


def test_anchors_for_one_issuer_clear_those_of_any_other(uow: UnitOfWork, anchor: Anchor) -> None:
    with uow() as unit:
        trust_anchors(unit.session, "old-issuer", [anchor.public])
        trust_anchors(unit.session, ISSUER, [anchor.public])

    with pytest.raises(KeySetRefused, match="no trust anchor"):
        learn(uow, anchor.signed((Signer(), None), issuer="old-issuer"))


@pytest.mark.parametrize(
    "text",
    [
        "AAAA",  # too short
        "A" * 44,  # too long
        "B" * 42 + "=",  # padded, one short
        "B" * 42 + "\x00",  # NUL
        "B" * 42 + "+",  # base64, not base64url
        ",".join(letter * 43 for letter in "CDEFG"),  # more than MAX_ANCHORS
        "x" * 1000,
    ],
)
def test_a_malformed_anchor_setting_is_an_error(text: str) -> None:
    with pytest.raises(ValueError, match="anchor"):
        parse_anchors(text)


def test_anchors_are_read_comma_separated_with_blanks_ignored() -> None:
    first, second = Anchor().public, Anchor().public

    assert parse_anchors(f" {first} ,{second},") == [first, second]
    assert parse_anchors("") == []


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
    uow: UnitOfWork, anchor: Anchor, kind: str, raised: tuple[type[Exception], str]
) -> None:
    """Raising is what makes the consumer retry and then dead-letter the event."""
    known, good, bad = Signer(), Signer(), Signer()
    learn(uow, anchor.signed((known, None)))
    held = held_version(uow)
    keys = [
        PublishedKey(jwk=public_jwk(good.kid, good.key.public_key())),
        PublishedKey(jwk=bad_jwk(kind, bad)),
    ]
    version = anchor.issued + 1
    signature = sign_keyset(anchor.key, ISSUER, version, keys)
    error, message = raised

    with pytest.raises(error, match=message):
        learn(uow, SigningKeys(issuer=ISSUER, keys=keys, version=version, signature=signature))

    assert trusted(uow) == {known.kid: None}, "nothing of the bad set is trusted"
    assert held_version(uow) == held


@pytest.mark.parametrize(
    "change",
    [
        {"keys": []},
        {"signature": None},
        {"signature": "A" * 85},
        {"signature": "A" * 85 + "\n"},
        {"signature": "A" * 86 + "=="},
        {"signature": "A" * 10**5},
        {"version": 0},
        {"version": -1},
        {"version": 2**63},
        {"version": None},
    ],
)
def test_a_malformed_set_is_refused_before_it_could_untrust_every_key(
    anchor: Anchor, change: dict[str, Any]
) -> None:
    body = {**anchor.signed((Signer(), None)).model_dump(mode="json"), **change}
    body = {name: value for name, value in body.items() if value is not None}

    with pytest.raises(ValidationError):
        SigningKeys.model_validate_json(json.dumps(body))


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
    service_uow: Callable[[ServiceSpec], UnitOfWork],
    anchor: Anchor,
    spec: ServiceSpec,
    router: EventRouter,
) -> None:
    uow = anchored(service_uow(spec), anchor)
    old, new = Signer(), Signer()

    with uow() as unit:
        deliver(router, unit, anchor.signed((old, None)), anchor.signed((old, LATER), (new, None)))

    assert trusted(uow) == {old.kid: LATER, new.kid: None}
    keys = KeyRing(lambda: trusted_keys(uow.sessions))
    assert keys.verify(new.token("user-3"), ISSUER).subject == "user-3"
