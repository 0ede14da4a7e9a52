from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.security import OAuth2PasswordRequestForm

from services.user import handlers, passwords, tokens
from services.user.config import UserSettings
from services.user.schemas import NotificationOut, TokenOut, UserIn, UserOut
from shared.runtime.app import get_runtime
from shared.runtime.auth import AUTH_ERRORS, OPERATOR_ERRORS, Caller, OperatorCaller
from shared.runtime.errors import BODY_ERRORS, errors
from shared.runtime.limits import LIMIT_ERRORS, RateLimiter, client_address, digest, enforce
from shared.runtime.service import ServiceRuntime

router = APIRouter(tags=["users"])
Runtime = Annotated[ServiceRuntime, Depends(get_runtime)]
UNKNOWN_USER = {**AUTH_ERRORS, **errors({404: "Unknown user"})}
MAX_USERNAME = 254
"""The longest e-mail address (RFC 5321's path limit, less its angle brackets)."""
MAX_PASSWORD = 1024
"""Longer than any password an account can have (128 at registration) with room to spare."""


@router.post(
    "/users",
    status_code=201,
    response_model=UserOut,
    responses={
        **errors(
            {
                409: "Email already registered",
                503: "Too many sign-ups being hashed at once; `Retry-After` says when to retry",
            }
        ),
        **LIMIT_ERRORS,
        **BODY_ERRORS,
    },
)
def register_user(body: UserIn, request: Request, runtime: Runtime) -> UserOut:
    """Open an account; its password is stored only as an Argon2 hash."""
    limits: Limits = request.app.state.user_limits
    enforce((limits.registrations, client_address(request)))
    # hashed before the transaction: on SQLite it would hold the one write lock meanwhile
    password_hash = passwords.hash_password(body.password)
    with runtime.uow() as unit:
        return UserOut.model_validate(
            handlers.register_user(unit, body.name, body.email, password_hash)
        )


class SignInForm(OAuth2PasswordRequestForm):
    """OAuth2's password form, with an e-mail's length at most for the username and a
    bounded password: anything longer is 422 before any limit or hash."""

    def __init__(
        self,
        *,
        grant_type: Annotated[str | None, Form(pattern="^password$")] = None,
        username: Annotated[str, Form(max_length=MAX_USERNAME)],
        password: Annotated[
            str, Form(max_length=MAX_PASSWORD, json_schema_extra={"format": "password"})
        ],
        scope: Annotated[str, Form()] = "",
        client_id: Annotated[str | None, Form()] = None,
        client_secret: Annotated[str | None, Form(json_schema_extra={"format": "password"})] = None,
    ) -> None:
        super().__init__(
            grant_type=grant_type,
            username=username,
            password=password,
            scope=scope,
            client_id=client_id,
            client_secret=client_secret,
        )


@router.post(
    "/token",
    response_model=TokenOut,
    responses={**errors({401: "Incorrect e-mail or password"}), **LIMIT_ERRORS, **BODY_ERRORS},
)
def get_token(
    form: Annotated[SignInForm, Depends()], request: Request, runtime: Runtime
) -> TokenOut:
    """OAuth2's password flow: `username` is the e-mail address. Every attempt counts
    against the client's address; a failed one also against the account from that
    address, so someone guessing elsewhere never locks its owner out."""
    settings = _settings(runtime)
    limits: Limits = request.app.state.user_limits
    client = client_address(request)
    attempt = digest(form.username.strip().lower(), client)
    enforce((limits.sign_ins, client), (limits.failures, attempt))
    with runtime.uow.read() as unit:
        token = tokens.issue_token(
            unit,
            form.username,
            form.password,
            keystore=request.app.state.keystore,
            issuer=settings.auth_issuer,
            ttl=settings.token_ttl,
            propagation=settings.key_propagation,
        )
    limits.failures.refund(attempt)  # it did not fail
    return TokenOut(access_token=token, expires_in=int(settings.token_ttl.total_seconds()))


@router.get("/users/me", response_model=UserOut, responses=UNKNOWN_USER)
def get_me(caller: Caller, runtime: Runtime) -> UserOut:
    with runtime.uow.read() as unit:
        return UserOut.model_validate(handlers.get_user(unit, caller.subject))


@router.get("/users/{user_id}", response_model=UserOut, responses=UNKNOWN_USER)
def get_user(user_id: str, caller: Caller, runtime: Runtime) -> UserOut:
    """A user's own account (anyone else's is 404)."""
    with runtime.uow.read() as unit:
        return UserOut.model_validate(handlers.get_user(unit, _own(caller, user_id)))


@router.get(
    "/users/{user_id}/notifications",
    response_model=list[NotificationOut],
    responses=UNKNOWN_USER,
)
def list_notifications(user_id: str, caller: Caller, runtime: Runtime) -> list[NotificationOut]:
    """What the user was told about their orders (anyone else's is 404)."""
    with runtime.uow.read() as unit:
        found = handlers.list_notifications(unit, _own(caller, user_id))
        return [NotificationOut.model_validate(n) for n in found]


@router.post("/keys/rotate", status_code=204, responses=OPERATOR_ERRORS, tags=["ops"])
def rotate_keys(_: OperatorCaller, request: Request, runtime: Runtime) -> None:
    """Sign new tokens with a new key; the old one is trusted until its tokens expire."""
    settings = _settings(runtime)
    with runtime.uow() as unit:
        tokens.rotate_keys(
            unit,
            keystore=request.app.state.keystore,
            issuer=settings.auth_issuer,
            ttl=settings.token_ttl,
            propagation=settings.key_propagation,
        )
    runtime.keys.refresh()


@router.get("/.well-known/jwks.json", tags=["ops"])
def jwks(runtime: Runtime) -> dict[str, list[dict[str, object]]]:
    """The public keys tokens may be signed with, as a JWK Set."""
    with runtime.uow.read() as unit:
        return {"keys": tokens.trusted_jwks(unit)}


def _own(caller: Caller, user_id: str) -> str:
    if user_id != caller.subject:
        raise handlers.UserNotFound(user_id)
    return user_id


def _settings(runtime: ServiceRuntime) -> UserSettings:
    settings = runtime.settings
    assert isinstance(settings, UserSettings)
    return settings


@dataclass(frozen=True)
class Limits:
    """The user service's own limits (each process keeps its own buckets)."""

    sign_ins: RateLimiter
    """Every POST /token, per client address."""
    failures: RateLimiter
    """Failed POST /token, per (account, client address): taken before the password is
    checked, given back when it matched."""
    registrations: RateLimiter
    """POST /users, per client address."""

    @classmethod
    def of(cls, settings: UserSettings) -> Limits:
        return cls(
            RateLimiter(settings.token_rate_per_address, settings.token_address_burst),
            RateLimiter(settings.token_failure_rate, settings.token_failure_burst),
            RateLimiter(settings.register_rate_per_address, settings.register_burst),
        )
