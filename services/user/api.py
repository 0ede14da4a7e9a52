from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.security import OAuth2PasswordRequestForm

from services.user import handlers, tokens
from services.user.config import UserSettings
from services.user.schemas import NotificationOut, TokenOut, UserIn, UserOut
from shared.runtime.app import get_runtime
from shared.runtime.auth import AUTH_ERRORS, OPERATOR_ERRORS, Caller, OperatorCaller
from shared.runtime.http import BODY_ERRORS, errors
from shared.runtime.limits import LIMIT_ERRORS, RateLimiter, enforce
from shared.runtime.service import ServiceRuntime

router = APIRouter(tags=["users"])
Runtime = Annotated[ServiceRuntime, Depends(get_runtime)]
UNKNOWN_USER = {**AUTH_ERRORS, **errors({404: "Unknown user"})}


@router.post(
    "/users",
    status_code=201,
    response_model=UserOut,
    responses={**errors({409: "Email already registered"}), **LIMIT_ERRORS, **BODY_ERRORS},
)
def register_user(body: UserIn, request: Request, runtime: Runtime) -> UserOut:
    """Open an account; its password is stored only as an Argon2 hash."""
    client = request.client.host if request.client else "unknown"
    enforce((runtime.per_address, client))
    with runtime.uow() as unit:
        return UserOut.model_validate(handlers.register_user(unit, body))


@router.post(
    "/token",
    response_model=TokenOut,
    responses={**errors({401: "Incorrect e-mail or password"}), **LIMIT_ERRORS, **BODY_ERRORS},
)
def get_token(
    form: Annotated[OAuth2PasswordRequestForm, Depends()], request: Request, runtime: Runtime
) -> TokenOut:
    """OAuth2's password flow: `username` is the e-mail address."""
    settings = _settings(runtime)
    per_account, per_address = request.app.state.token_limits
    client = request.client.host if request.client else "unknown"
    enforce((per_account, form.username.strip().lower()), (per_address, client))
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


def token_limits(settings: UserSettings) -> tuple[RateLimiter, RateLimiter]:
    """Sign-in attempts per account and per client address."""
    return (
        RateLimiter(settings.token_rate_per_account, 10),
        RateLimiter(settings.token_rate_per_address, 5 * settings.token_rate_per_address),
    )
