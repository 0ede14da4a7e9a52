"""The user service: accounts and tokens, and notifications kept from order's events.

Run: python -m services user. With uvicorn's own command line, give it the flags of
tools/stack.py's `ServiceProcess.command` (request heads bounded, no proxy headers)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from services.user import api, handlers, tokens
from services.user.config import UserSettings
from services.user.consumers import events
from services.user.events import PUBLISHES
from services.user.models import Base
from shared.runtime.app import app_factory
from shared.runtime.service import ServiceRuntime, ServiceSpec
from shared.storage.tables import shared_tables


def start(runtime: ServiceRuntime) -> None:
    """Publish the signing keys (making the first), and set the operator's password."""
    settings = runtime.settings
    assert isinstance(settings, UserSettings)
    with runtime.uow() as unit:
        tokens.ensure_signing_key(
            unit,
            issuer=settings.auth_issuer,
            ttl=settings.token_ttl,
            propagation=settings.key_propagation,
        )
    password_file = (
        Path(settings.operator_password_file) if settings.operator_password_file else None
    )
    if password_file is not None and password_file.is_file():
        try:
            password = password_file.read_text().strip()
        except OSError as exc:
            raise RuntimeError(f"cannot read the operator's password file: {exc}") from exc
        with runtime.uow() as unit:
            tokens.ensure_operator(unit, settings.operator_email, password)
    runtime.keys.refresh()


SPEC = ServiceSpec(
    name="user",
    router=events,
    publishes=PUBLISHES,
    tables=shared_tables(Base),
    migrations=Path(__file__).parent / "migrations",
    on_start=start,
)

_create_app = app_factory(SPEC, UserSettings, title="User service", routers=[api.router])


def create_app(settings: UserSettings | None = None) -> FastAPI:
    settings = settings or UserSettings()
    app = _create_app(settings)
    app.state.user_limits = api.Limits.of(settings)
    app.state.known_subject = lambda runtime, subject: _known(runtime, subject)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST"],
        allow_headers=["Authorization", "Content-Type"],
    )
    return app


def _known(runtime: ServiceRuntime, subject: str) -> bool:
    with runtime.uow.read() as unit:
        return handlers.user_exists(unit, subject)
