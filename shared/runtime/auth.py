"""Bearer tokens, verified offline.

The user service signs short-lived JWTs with Ed25519 (`EdDSA`): `sub` is the user id,
`scope` a space-separated list (`operator` for the shop's staff), plus `exp`, `iat`,
`iss` and a `kid` header. It publishes its public keys as `signing-keys` events; every
service stores them in its own `trusted_keys` table (shared.runtime.keys) and checks
tokens against them, so no service calls another.

    @router.post("/orders")
    def place_order(body: OrderIn, caller: Caller) -> ...:        # any signed-in user
    @router.put("/stock/{product_id}")
    def set_stock(..., _: OperatorCaller) -> ...:                 # scope `operator`

A request without a usable token is refused as `NotAuthenticated` (the HTTP edge answers
401 with a Bearer challenge: shared.runtime.errors); a service that has not learnt any key
yet answers 503. A token that lives longer than
`AUTH_MAX_TOKEN_TTL_MINUTES` (from `iat` to `exp`), or was issued more than a minute
ahead of the service's clock, is refused even when its signature is good."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from fastapi import Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import OAuth2PasswordBearer
from jwt.algorithms import OKPAlgorithm

from shared.errors import NotAuthenticated
from shared.runtime.errors import Responses, errors

log = logging.getLogger(__name__)

ALGORITHM = "EdDSA"
OPERATOR = "operator"
MAX_LIFETIME = timedelta(minutes=60)
"""The longest a token may live (`AUTH_MAX_TOKEN_TTL_MINUTES`); the user service issues
them for 15 minutes."""
CLOCK_LEEWAY = timedelta(seconds=60)
"""How far ahead of this service's clock the issuer's may be (`iat` in the future)."""

bearer = OAuth2PasswordBearer(tokenUrl="/token", auto_error=False)
"""The OpenAPI security scheme; each app points its `tokenUrl` at the user service."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a verified token speaks for."""

    subject: str
    scopes: frozenset[str]


@dataclass(frozen=True, slots=True)
class TrustedKey:
    kid: str
    key: Ed25519PublicKey
    not_after: datetime | None
    """When tokens signed with it stop being accepted (None: it is current)."""


class TokenRejected(Exception):
    """The token cannot be trusted; `str(exc)` says why, without echoing the token."""


class NoKeys(Exception):
    """No signing key has been learnt yet: the service cannot judge any token."""


class KeyRing:
    """The keys a service trusts, by kid. `load` reads them from the service's database;
    a token naming a kid the ring does not hold reloads it (at most once a second),
    since another process of the service may be the one that consumed the key."""

    def __init__(
        self,
        load: Callable[[], list[TrustedKey]],
        reload_every: float = 1.0,
        max_age: float = 30.0,
        max_lifetime: timedelta = MAX_LIFETIME,
    ) -> None:
        """`max_age`: reload at least this often (seconds) anyway, so that a key dropped
        from the set (a leaked one rotated out, say) stops being trusted.
        `max_lifetime`: refuse a token that lives longer (from `iat` to `exp`)."""
        self._load = load
        self._max_lifetime = max_lifetime.total_seconds()
        self._reload_every = reload_every
        self._max_age = max_age
        self._keys: dict[str, TrustedKey] = {}
        self._verified: dict[str, tuple[Principal, str, float]] = {}
        self._loaded_at = -reload_every
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """Load the trusted keys; if the database cannot answer, keep the ones held."""
        try:
            keys = {key.kid: key for key in self._load()}
        except Exception as exc:
            log.warning("trusted keys not reloaded, keeping %d: %r", len(self._keys), exc)
            keys = self._keys
        with self._lock:
            self._keys = keys
            self._loaded_at = time.monotonic()

    def answers_from_memory(self, token: str) -> bool:
        """Whether `verify(token)` would touch neither the database nor the signature:
        a token verified before, and a ring loaded less than `max_age` ago."""
        return token in self._verified and time.monotonic() - self._loaded_at < self._max_age

    def get(self, kid: str) -> TrustedKey | None:
        key = self._keys.get(kid)
        if key is None and time.monotonic() - self._loaded_at >= self._reload_every:
            self.refresh()
            key = self._keys.get(kid)
        return key

    def empty(self) -> bool:
        if not self._keys and time.monotonic() - self._loaded_at >= self._reload_every:
            self.refresh()
        return not self._keys

    def verify(self, token: str, issuer: str, now: datetime | None = None) -> Principal:
        """The principal of a valid token, or TokenRejected (NoKeys if nothing is known).

        A token already verified is looked up, not verified again, until it expires or
        its key is no longer trusted."""
        now = now or datetime.now(UTC)
        if time.monotonic() - self._loaded_at >= self._max_age:
            self.refresh()
        if (seen := self._verified.get(token)) is not None:
            principal, kid, expires = seen
            trusted = self._keys.get(kid)
            alive = trusted is not None and (trusted.not_after is None or now < trusted.not_after)
            if alive and now.timestamp() < expires:
                return principal
            self._verified.pop(token, None)
        principal, kid, expires = self._verify(token, issuer, now)
        if len(self._verified) >= 10_000:
            self._verified.clear()
        self._verified[token] = (principal, kid, expires)
        return principal

    def _verify(self, token: str, issuer: str, now: datetime) -> tuple[Principal, str, float]:
        if self.empty():
            raise NoKeys
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenRejected("malformed token") from exc
        if header.get("alg") != ALGORITHM:
            raise TokenRejected("unsupported algorithm")
        kid = header.get("kid")
        trusted = self.get(kid) if isinstance(kid, str) else None
        if trusted is None:
            raise TokenRejected("unknown key")
        if trusted.not_after is not None and now >= trusted.not_after:
            raise TokenRejected("retired key")
        try:
            claims = jwt.decode(
                token,
                trusted.key,
                algorithms=[ALGORITHM],
                issuer=issuer,
                options={"require": ["exp", "iat", "iss", "sub"]},
                leeway=CLOCK_LEEWAY,  # for `iat`; `exp` is judged below, strictly
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenRejected("token expired") from exc
        except jwt.InvalidIssuerError as exc:
            raise TokenRejected("wrong issuer") from exc
        except jwt.ImmatureSignatureError as exc:  # `iat` ahead of this clock
            raise TokenRejected("token issued in the future") from exc
        except jwt.PyJWTError as exc:
            raise TokenRejected("invalid token") from exc
        if claims["exp"] <= now.timestamp():  # PyJWT judges by the clock, not by `now`
            raise TokenRejected("token expired")
        if claims["iat"] > now.timestamp() + CLOCK_LEEWAY.total_seconds():
            raise TokenRejected("token issued in the future")
        if claims["exp"] - claims["iat"] > self._max_lifetime:
            raise TokenRejected("token lifetime too long")
        scope = claims.get("scope", "")
        if not isinstance(claims["sub"], str) or not isinstance(scope, str):
            raise TokenRejected("invalid claims")
        return Principal(claims["sub"], frozenset(scope.split())), trusted.kid, claims["exp"]


def mint(
    key: Ed25519PrivateKey,
    kid: str,
    subject: str,
    *,
    issuer: str,
    ttl: timedelta,
    scopes: frozenset[str] = frozenset(),
    now: datetime | None = None,
) -> str:
    """A signed access token."""
    now = now or datetime.now(UTC)
    claims = {
        "sub": subject,
        "scope": " ".join(sorted(scopes)),
        "iss": issuer,
        "iat": int(now.timestamp()),
        "exp": int((now + ttl).timestamp()),
    }
    return jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": kid})


def public_jwk(kid: str, key: Ed25519PublicKey) -> dict[str, Any]:
    """The public key as a JWK (RFC 8037)."""
    jwk: dict[str, Any] = OKPAlgorithm.to_jwk(key, as_dict=True)
    return {**jwk, "kid": kid, "alg": ALGORITHM, "use": "sig"}


def key_from_jwk(jwk: Mapping[str, Any]) -> Ed25519PublicKey:
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        raise ValueError("not an Ed25519 key")
    key = OKPAlgorithm.from_jwk(dict(jwk))
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not a public Ed25519 key")
    return key


def _unauthorized(reason: str | None) -> NotAuthenticated:
    """No token (`reason` None), or a token refused for `reason`."""
    if reason is None:
        return NotAuthenticated("not authenticated")
    return NotAuthenticated(f"invalid token: {reason}", credential_problem=reason)


async def authenticated(
    request: Request, token: Annotated[str | None, Depends(bearer)]
) -> Principal:
    """The caller, from the `Authorization: Bearer` header. (A coroutine: checking a
    token is CPU work of microseconds, not worth a thread hop per request.)"""
    if not token:
        raise _unauthorized(None)
    runtime = request.app.state.runtime
    keys, issuer = runtime.keys, runtime.settings.auth_issuer
    try:
        if keys.answers_from_memory(token):  # the usual case: no I/O, so on the loop
            principal: Principal = keys.verify(token, issuer)
        else:  # may read the keys from the database
            principal = await run_in_threadpool(keys.verify, token, issuer)
    except NoKeys:
        raise HTTPException(
            503, "no signing key learnt yet: try again shortly", headers={"Retry-After": "1"}
        ) from None
    except TokenRejected as exc:
        raise _unauthorized(str(exc)) from None
    known = getattr(request.app.state, "known_subject", None)
    if known is not None and not await run_in_threadpool(known, runtime, principal.subject):
        raise _unauthorized("unknown user")
    request.state.principal = principal
    return principal


async def operator(principal: Annotated[Principal, Depends(authenticated)]) -> Principal:
    if OPERATOR not in principal.scopes:
        raise HTTPException(403, "this needs the operator scope")
    return principal


Caller = Annotated[Principal, Depends(authenticated)]
OperatorCaller = Annotated[Principal, Depends(operator)]

AUTH_ERRORS: Responses = errors(
    {
        401: "Missing, expired or invalid bearer token",
        503: "The service has not learnt the signing keys yet",
    }
)
OPERATOR_ERRORS: Responses = {**AUTH_ERRORS, **errors({403: "Needs the operator scope"})}
