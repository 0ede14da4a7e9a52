"""Bearer tokens checked offline (shared.runtime.auth): what KeyRing.verify accepts and
refuses, the verified-token cache, the JWK round trip, and the route dependencies on a
tiny app. No broker, no database, no sleeping: time is the `now` parameter."""

from __future__ import annotations

import hashlib
import hmac
import logging
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, rsa, x25519
from fastapi import FastAPI
from fastapi.testclient import TestClient
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from pydantic import ValidationError

from services.order.config import OrderSettings
from services.order.main import create_app
from services.user.config import UserSettings
from shared.runtime import http
from shared.runtime.auth import (
    ALGORITHM,
    OPERATOR,
    Caller,
    KeyRing,
    NoKeys,
    OperatorCaller,
    Principal,
    TokenRejected,
    TrustedKey,
    key_from_jwk,
    mint,
    public_jwk,
)
from tests.unit.signing import ISSUER, TTL, Signer, b64url, claims_now, ring, segments

pytestmark = pytest.mark.unit


def rejected(keys: KeyRing, token: str, reason: str, now: datetime | None = None) -> None:
    """verify refuses `token`, saying `reason` and never echoing the token."""
    with pytest.raises(TokenRejected) as caught:
        keys.verify(token, ISSUER, now=now)
    assert str(caught.value) == reason
    assert token not in str(caught.value)


def signed(signer: Signer, claims: dict[str, Any], **header: Any) -> str:
    """A token with exactly these claims, properly signed by `signer`."""
    return jwt.encode(
        claims, signer.key, algorithm=ALGORITHM, headers={"kid": signer.kid, **header}
    )


def by_hand(header: dict[str, Any], claims: dict[str, Any], sign: Any = None) -> str:
    """A compact JWS assembled without a library; `sign(signing_input)` gives the signature."""
    signing_input = f"{b64url(header)}.{b64url(claims)}"
    signature = b64url(sign(signing_input.encode())) if sign else ""
    return f"{signing_input}.{signature}"


# What verify accepts


def test_a_valid_token_gives_its_subject_and_scopes() -> None:
    signer = Signer()
    keys, _ = ring(signer.trusted())

    principal = keys.verify(signer.token("user-1", scopes=frozenset({OPERATOR, "audit"})), ISSUER)

    assert principal == Principal("user-1", frozenset({"operator", "audit"}))


def test_a_token_without_scopes_has_none() -> None:
    signer = Signer()
    keys, _ = ring(signer.trusted())

    assert keys.verify(signer.token("user-1"), ISSUER).scopes == frozenset()


def test_a_key_learnt_after_the_ring_was_loaded_is_found_by_its_kid() -> None:
    first, later = Signer(), Signer()
    keys = KeyRing(lambda: list(held), reload_every=0)
    held = [first.trusted()]
    keys.verify(first.token(), ISSUER)

    held.append(later.trusted())

    assert keys.verify(later.token("user-2"), ISSUER).subject == "user-2"


def test_an_unknown_kid_reloads_the_ring_at_most_once_per_interval() -> None:
    first, later = Signer(), Signer()
    loads = []

    def load() -> list[Any]:
        loads.append(1)
        return list(held)

    held = [first.trusted()]
    keys = KeyRing(load, reload_every=3600)
    keys.verify(first.token(), ISSUER)
    held.append(later.trusted())

    for _ in range(3):
        rejected(keys, later.token(), "unknown key")
    assert len(loads) == 1, "a flood of unknown kids must not reload the table each time"


# What verify refuses


def test_an_expired_token_is_rejected() -> None:
    signer = Signer()
    keys, _ = ring(signer.trusted())
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)

    rejected(keys, signer.token(now=an_hour_ago, ttl=TTL), "token expired")


def test_a_token_is_judged_at_the_time_it_is_verified() -> None:
    signer = Signer()
    keys, _ = ring(signer.trusted())
    issued = datetime.now(UTC).replace(microsecond=0)
    token = signer.token(now=issued, ttl=TTL)

    assert keys.verify(token, ISSUER, now=issued + TTL - timedelta(seconds=1)).subject
    rejected(KeyRing(lambda: [signer.trusted()]), token, "token expired", now=issued + TTL)


def test_a_token_that_lives_longer_than_the_maximum_is_rejected() -> None:
    """A leaked signing key, or a bug in the issuer, should not make tokens that live a
    year: a service refuses any whose lifetime (exp - iat) is over its maximum."""
    signer = Signer()
    keys = KeyRing(lambda: [signer.trusted()], max_lifetime=timedelta(minutes=60))

    assert keys.verify(signer.token(ttl=timedelta(minutes=60)), ISSUER).subject
    for ttl in (timedelta(minutes=60, seconds=1), timedelta(days=365)):
        rejected(keys, signer.token(ttl=ttl), "token lifetime too long")


def test_a_token_issued_in_the_future_beyond_the_leeway_is_rejected() -> None:
    signer = Signer()
    keys, _ = ring(signer.trusted())
    now = datetime.now(UTC).replace(microsecond=0)

    slightly_ahead = signer.token(now=now + timedelta(seconds=30), ttl=TTL)
    assert keys.verify(slightly_ahead, ISSUER, now=now).subject, "a clock a little ahead"
    rejected(
        keys,
        signer.token(now=now + timedelta(minutes=5), ttl=TTL),
        "token issued in the future",
        now=now,
    )


def test_a_tokens_lifetime_is_bounded_by_default_and_by_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert OrderSettings().auth_max_token_ttl_minutes == 60
    monkeypatch.setenv("AUTH_MAX_TOKEN_TTL_MINUTES", "5")
    settings = OrderSettings()
    signer = Signer()
    keys = KeyRing(lambda: [signer.trusted()], max_lifetime=settings.max_token_lifetime)

    rejected(keys, signer.token(ttl=TTL), "token lifetime too long")


def test_the_user_service_cannot_issue_tokens_longer_than_the_services_accept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("USER_TOKEN_TTL_MINUTES", "90")
    with pytest.raises(ValidationError, match="AUTH_MAX_TOKEN_TTL_MINUTES"):
        UserSettings()
    monkeypatch.setenv("AUTH_MAX_TOKEN_TTL_MINUTES", "120")
    assert UserSettings().token_ttl == timedelta(minutes=90)


@pytest.mark.parametrize(
    "token",
    ["garbage", "abc.def", "not-json.e30.c2ln", "e30", "a.b.c.d"],
    ids=["garbage", "two-segments", "header-not-json", "one-segment", "four-segments"],
)
def test_a_malformed_token_is_rejected(token: str) -> None:
    keys, _ = ring(Signer().trusted())

    rejected(keys, token, "malformed token")


def test_a_real_token_cut_to_two_segments_is_malformed() -> None:
    signer = Signer()
    keys, _ = ring(signer.trusted())
    header, claims, _ = signer.token().split(".")

    rejected(keys, f"{header}.{claims}", "malformed token")


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_an_unsigned_token_alg_none_is_rejected(alg: str) -> None:
    signer = Signer()
    keys, _ = ring(signer.trusted())
    token = by_hand({"alg": alg, "kid": signer.kid, "typ": "JWT"}, claims_now())

    assert token.endswith("."), "no signature at all"
    rejected(keys, token, "unsupported algorithm")


def public_secrets(signer: Signer) -> dict[str, bytes]:
    """What an attacker knows of the public key and might use as an HMAC secret."""
    public = signer.key.public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return {"raw": raw, "pem": pem, "jwk-x": public_jwk(signer.kid, public)["x"].encode()}


@pytest.mark.parametrize("form", ["raw", "pem", "jwk-x"])
@pytest.mark.parametrize("alg", ["HS256", ALGORITHM])
def test_an_hmac_signed_with_the_public_key_is_rejected(form: str, alg: str) -> None:
    """Key confusion: HS256 keyed with the public key, which every service may know."""
    signer = Signer()
    keys, _ = ring(signer.trusted())
    secret = public_secrets(signer)[form]

    token = by_hand(
        {"alg": alg, "kid": signer.kid, "typ": "JWT"},
        claims_now(scope=OPERATOR),
        lambda data: hmac.new(secret, data, hashlib.sha256).digest(),
    )

    rejected(keys, token, "unsupported algorithm" if alg == "HS256" else "invalid token")


def test_a_token_of_a_key_the_ring_does_not_hold_is_rejected() -> None:
    keys, _ = ring(Signer().trusted())
    stranger = Signer()

    rejected(keys, stranger.token(), "unknown key")


@pytest.mark.parametrize(
    ("kid", "reason"),
    [(None, "unknown key"), (7, "malformed token"), (["k"], "malformed token")],
    ids=["no-kid", "number", "list"],
)
def test_a_token_without_a_usable_kid_is_rejected(kid: Any, reason: str) -> None:
    signer = Signer()
    keys, _ = ring(signer.trusted())
    header = {"alg": ALGORITHM, "typ": "JWT"} | ({} if kid is None else {"kid": kid})

    token = by_hand(header, claims_now(), signer.key.sign)

    rejected(keys, token, reason)


def test_a_token_with_the_kid_of_a_trusted_key_but_signed_by_another_is_rejected() -> None:
    trusted, impostor = Signer(), Signer()
    keys, _ = ring(trusted.trusted())

    token = Signer(kid=trusted.kid, key=impostor.key).token()

    rejected(keys, token, "invalid token")


def test_a_token_of_another_issuer_is_rejected() -> None:
    signer = Signer()
    keys, _ = ring(signer.trusted())

    rejected(keys, signer.token(issuer="someone-else"), "wrong issuer")


@pytest.mark.parametrize(
    "change",
    [{"sub": "admin"}, {"scope": OPERATOR}, {"exp": 4_102_444_800}],
    ids=["another-subject", "more-scope", "longer-life"],
)
def test_a_tampered_payload_with_the_original_signature_is_rejected(
    change: dict[str, Any],
) -> None:
    signer = Signer()
    keys, _ = ring(signer.trusted())
    token = signer.token("user-1")
    header, _, signature = token.split(".")

    tampered = f"{header}.{b64url(segments(token)[1] | change)}.{signature}"

    assert tampered != token
    rejected(keys, tampered, "invalid token")


@pytest.mark.parametrize("claim", ["exp", "iat", "iss", "sub"])
def test_a_token_missing_a_required_claim_is_rejected(claim: str) -> None:
    signer = Signer()
    keys, _ = ring(signer.trusted())

    token = signed(signer, claims_now(**{claim: None}))

    assert claim not in segments(token)[1]
    rejected(keys, token, "invalid token")


@pytest.mark.parametrize(
    ("wrong", "reason"),
    [
        ({"sub": 42}, "invalid token"),
        ({"scope": ["operator"]}, "invalid claims"),
        ({"exp": "tomorrow"}, "invalid token"),
    ],
    ids=["sub-not-a-string", "scope-not-a-string", "exp-not-a-number"],
)
def test_a_token_with_claims_of_the_wrong_type_is_rejected(
    wrong: dict[str, Any], reason: str
) -> None:
    signer = Signer()
    keys, _ = ring(signer.trusted())

    rejected(keys, signed(signer, claims_now(**wrong)), reason)


def test_a_retired_key_is_trusted_until_its_not_after_and_then_rejected() -> None:
    signer = Signer()
    issued = datetime.now(UTC)
    not_after = issued + timedelta(minutes=5)
    keys, _ = ring(signer.trusted(not_after=not_after), Signer().trusted())
    token = signer.token(now=issued)

    assert keys.verify(token, ISSUER, now=not_after - timedelta(seconds=1)).subject == "user-1"
    rejected(keys, token, "retired key", now=not_after)
    rejected(keys, signer.token(now=issued), "retired key", now=not_after + timedelta(hours=1))


def test_an_empty_ring_cannot_judge_any_token() -> None:
    keys, _ = ring()

    for token in (Signer().token(), "garbage"):
        with pytest.raises(NoKeys):
            keys.verify(token, ISSUER)


def test_a_ring_that_learns_its_first_key_starts_accepting() -> None:
    signer = Signer()
    keys = KeyRing(lambda: list(held), reload_every=0)
    held: list[Any] = []
    with pytest.raises(NoKeys):
        keys.verify(signer.token(), ISSUER)

    held.append(signer.trusted())

    assert keys.verify(signer.token(), ISSUER).subject == "user-1"


# The verified-token cache


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every token whose signature is checked (jwt.decode), in order."""
    seen: list[str] = []
    decode = jwt.decode

    def counting(token: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(token)
        return decode(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting)
    return seen


def test_a_verified_token_is_looked_up_not_verified_again(decodes: list[str]) -> None:
    signer = Signer()
    keys, _ = ring(signer.trusted())
    token = signer.token("user-1", scopes=frozenset({OPERATOR}))

    first = keys.verify(token, ISSUER)
    again = keys.verify(token, ISSUER)

    assert again is first
    assert decodes == [token]


def test_the_cache_stops_accepting_a_token_once_it_expired() -> None:
    signer = Signer()
    keys, _ = ring(signer.trusted())
    issued = datetime.now(UTC).replace(microsecond=0)
    token = signer.token(now=issued, ttl=TTL)
    keys.verify(token, ISSUER, now=issued)

    assert keys.verify(token, ISSUER, now=issued + TTL - timedelta(seconds=1)).subject
    rejected(keys, token, "token expired", now=issued + TTL)


def test_the_cache_stops_accepting_a_token_once_its_key_is_gone() -> None:
    signer, other = Signer(), Signer()
    keys, held = ring(signer.trusted(), other.trusted())
    token = signer.token()
    keys.verify(token, ISSUER)

    held.remove(held[0])  # a newer signing-keys set left it out
    keys.refresh()

    rejected(keys, token, "unknown key")


def test_the_cache_stops_accepting_a_token_once_its_key_is_retired_and_past() -> None:
    signer = Signer()
    issued = datetime.now(UTC)
    keys, held = ring(signer.trusted())
    token = signer.token(now=issued)
    keys.verify(token, ISSUER, now=issued)

    held[0] = signer.trusted(not_after=issued + timedelta(minutes=1))
    keys.refresh()

    assert keys.verify(token, ISSUER, now=issued + timedelta(seconds=59)).subject
    rejected(keys, token, "retired key", now=issued + timedelta(minutes=1))


# Keys as JWKs


def test_mint_public_jwk_and_key_from_jwk_round_trip() -> None:
    signer = Signer()
    jwk = public_jwk(signer.kid, signer.key.public_key())

    assert jwk.keys() == {"kty", "crv", "x", "kid", "alg", "use"}, "never the private `d`"
    assert (jwk["kty"], jwk["crv"], jwk["kid"], jwk["alg"], jwk["use"]) == (
        "OKP",
        "Ed25519",
        signer.kid,
        "EdDSA",
        "sig",
    )
    public = key_from_jwk(jwk)
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    assert public.public_bytes(*raw) == signer.key.public_key().public_bytes(*raw)

    token = mint(
        signer.key, signer.kid, "user-1", issuer=ISSUER, ttl=TTL, scopes=frozenset({"b", "a"})
    )
    header, claims, _ = segments(token)
    assert header == {"alg": "EdDSA", "kid": signer.kid, "typ": "JWT"}
    assert (claims["sub"], claims["iss"], claims["scope"]) == ("user-1", ISSUER, "a b")
    assert claims["exp"] - claims["iat"] == TTL.total_seconds()
    keys = KeyRing(lambda: [TrustedKey(jwk["kid"], public, None)])
    assert keys.verify(token, ISSUER) == Principal("user-1", frozenset({"a", "b"}))


def raw_public(key: ed448.Ed448PublicKey | x25519.X25519PublicKey) -> str:
    return b64url(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def other_jwk(kind: str) -> dict[str, Any]:
    ed25519 = Signer().key
    if kind == "rsa":
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return dict(RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True))
    if kind == "ec-p256":
        ec_key = ec.generate_private_key(ec.SECP256R1())
        return dict(ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True))
    if kind == "ed448":
        ed448_key = ed448.Ed448PrivateKey.generate().public_key()
        return {"kty": "OKP", "crv": "Ed448", "x": raw_public(ed448_key)}
    if kind == "x25519":
        x25519_key = x25519.X25519PrivateKey.generate().public_key()
        return {"kty": "OKP", "crv": "X25519", "x": raw_public(x25519_key)}
    if kind == "hmac":
        return {"kty": "oct", "k": b64url(b"a shared secret of some length")}
    if kind == "ed25519-private":
        return dict(OKPAlgorithm.to_jwk(ed25519, as_dict=True))
    assert kind == "no-kty"
    return {"crv": "Ed25519", "x": public_jwk("k", ed25519.public_key())["x"]}


@pytest.mark.parametrize(
    "kind", ["rsa", "ec-p256", "ed448", "x25519", "hmac", "ed25519-private", "no-kty"]
)
def test_key_from_jwk_refuses_anything_but_a_public_ed25519_key(kind: str) -> None:
    jwk = other_jwk(kind)

    with pytest.raises(ValueError, match="Ed25519"):
        key_from_jwk(jwk)


# The route dependencies, on a tiny app


@pytest.fixture
def signer() -> Signer:
    return Signer()


@pytest.fixture
def app(signer: Signer) -> FastAPI:
    app = FastAPI()
    http.install(app, max_body_bytes=1024)

    @app.get("/me")
    def me(caller: Caller) -> dict[str, Any]:
        return {"subject": caller.subject, "scopes": sorted(caller.scopes)}

    @app.post("/stock")
    def stock(caller: OperatorCaller) -> dict[str, str]:
        return {"set_by": caller.subject}

    keys, _ = ring(signer.trusted())
    app.state.runtime = SimpleNamespace(keys=keys, settings=SimpleNamespace(auth_issuer=ISSUER))
    return app


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_valid_token_reaches_the_route_as_its_caller(app: FastAPI, signer: Signer) -> None:
    answer = TestClient(app).get("/me", headers=bearer(signer.token("user-1")))

    assert answer.status_code == 200
    assert answer.json() == {"subject": "user-1", "scopes": []}


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer "}, {"Authorization": "Basic dXNlcjpwYXNz"}],
    ids=["no-header", "empty-bearer", "basic"],
)
def test_no_token_is_401_with_a_bare_bearer_challenge(
    app: FastAPI, headers: dict[str, str]
) -> None:
    for answer in (
        TestClient(app).get("/me", headers=headers),
        TestClient(app).post("/stock", headers=headers),
    ):
        assert answer.status_code == 401
        assert answer.headers["WWW-Authenticate"] == "Bearer", "no error= without a token"
        assert answer.json() == {"detail": "not authenticated"}


def test_a_bad_token_is_401_with_error_invalid_token(app: FastAPI, signer: Signer) -> None:
    expired = signer.token(now=datetime.now(UTC) - timedelta(hours=1))

    answer = TestClient(app).get("/me", headers=bearer(expired))

    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"] == (
        'Bearer error="invalid_token", error_description="token expired"'
    )
    assert answer.json() == {"detail": "invalid token: token expired"}
    assert expired not in answer.text


@pytest.mark.parametrize("token", ["garbage", "a.b"])
def test_a_malformed_token_is_401_invalid_token(app: FastAPI, token: str) -> None:
    answer = TestClient(app).get("/me", headers=bearer(token))

    assert answer.status_code == 401
    assert 'error="invalid_token"' in answer.headers["WWW-Authenticate"]


def test_a_service_without_keys_answers_503_with_retry_after(app: FastAPI, signer: Signer) -> None:
    app.state.runtime.keys, _ = ring()

    answer = TestClient(app).get("/me", headers=bearer(signer.token()))

    assert answer.status_code == 503
    assert answer.headers["Retry-After"] == "1"
    assert "WWW-Authenticate" not in answer.headers, "the token is not at fault"


def test_an_operator_route_refuses_a_caller_without_the_scope(app: FastAPI, signer: Signer) -> None:
    client = TestClient(app)

    customer = client.post("/stock", headers=bearer(signer.token("user-1")))
    operator = client.post(
        "/stock", headers=bearer(signer.token("staff-1", scopes=frozenset({OPERATOR})))
    )

    assert customer.status_code == 403
    assert customer.json() == {"detail": "this needs the operator scope"}
    assert (operator.status_code, operator.json()) == (200, {"set_by": "staff-1"})


def test_a_subject_the_service_does_not_know_is_401_unknown_user(
    app: FastAPI, signer: Signer
) -> None:
    asked: list[str] = []

    def known_subject(runtime: Any, subject: str) -> bool:
        assert runtime is app.state.runtime
        asked.append(subject)
        return subject == "user-1"

    app.state.known_subject = known_subject
    client = TestClient(app)

    gone = client.get("/me", headers=bearer(signer.token("deleted-user")))
    here = client.get("/me", headers=bearer(signer.token("user-1")))

    assert gone.status_code == 401
    assert gone.headers["WWW-Authenticate"] == (
        'Bearer error="invalid_token", error_description="unknown user"'
    )
    assert here.status_code == 200
    assert asked == ["deleted-user", "user-1"]


def test_bad_token_requests_log_nothing_of_the_token(
    app: FastAPI, signer: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    good = signer.token("user-1")
    header, claims, signature = good.split(".")
    tokens = [
        signer.token(now=datetime.now(UTC) - timedelta(hours=1)),
        f"{header}.{b64url(segments(good)[1] | {'sub': 'admin'})}.{signature}",
        Signer().token(),
        "garbage-" + signature,
    ]
    caplog.set_level(logging.DEBUG)

    for token in tokens:
        assert TestClient(app).get("/me", headers=bearer(token)).status_code == 401

    assert caplog.records, "something was logged, so the check below means something"
    logged = caplog.text + "".join(repr(record.args) for record in caplog.records)
    for token in tokens:
        assert token not in logged
        assert token.rsplit(".", 1)[-1] not in logged, "not even the signature"
    assert claims not in logged


# Swagger UI's token URL


def test_the_openapi_password_flow_points_at_the_configured_token_url() -> None:
    app = create_app(OrderSettings(token_url="http://127.0.0.1:8004/token"))
    elsewhere = create_app(OrderSettings(token_url="https://shop.example/token"))

    def token_urls(app: FastAPI) -> set[str]:
        schemes = app.openapi()["components"]["securitySchemes"].values()
        return {scheme["flows"]["password"]["tokenUrl"] for scheme in schemes}

    assert token_urls(app) == {"http://127.0.0.1:8004/token"}
    assert token_urls(elsewhere) == {"https://shop.example/token"}
