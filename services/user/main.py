"""The user service: accounts and tokens, and notifications kept from order's events.

Run: `python -m services user` (services/__main__.py: host, port, workers)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from services.user import api, handlers, tokens
from services.user.config import UserSettings
from services.user.consumers import events
from services.user.events import PUBLISHES
from services.user.keystore import Keystore, WrongKey
from services.user.models import Base
from shared.runtime.app import create_service_app
from shared.runtime.service import ServiceRuntime, ServiceSpec
from shared.storage.tables import shared_tables


def start(runtime: ServiceRuntime, keystore: Keystore) -> None:
    """Seal private keys stored in clear, publish the signing keys (making the first), and
    set the operator's password."""
    settings = runtime.settings
    assert isinstance(settings, UserSettings)
    try:
        with runtime.uow() as unit:
            tokens.ensure_signing_key(
                unit,
                keystore=keystore,
                issuer=settings.auth_issuer,
                ttl=settings.token_ttl,
                propagation=settings.key_propagation,
            )
    except WrongKey as exc:
        raise RuntimeError(
            f"USER_KEY_ENCRYPTION_KEY_FILE is not the key the signing keys were sealed with: {exc}"
        ) from None
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


def read_keystore(settings: UserSettings) -> Keystore:
    """The keys the service holds outside its database; RuntimeError if one is missing."""
    return Keystore.from_files(
        settings.key_encryption_key_file,
        settings.keyset_signing_key_file,
        settings.keyset_public_key,
    )


SPEC = ServiceSpec(
    name="user",
    router=events,
    publishes=PUBLISHES,
    tables=shared_tables(Base),
    migrations=Path(__file__).parent / "migrations",
    consumer_linger=0.05,  # its views: no order waits for them
    # on_start: `start`, given the keystore create_app's lifespan reads
)


def create_app(settings: UserSettings | None = None) -> FastAPI:
    settings = settings or UserSettings()

    def on_start(runtime: ServiceRuntime) -> None:
        """Read the keystore at start (no start without it), for `start` and the routes."""
        app.state.keystore = read_keystore(settings)
        start(runtime, app.state.keystore)

    spec = replace(SPEC, on_start=on_start)
    app = create_service_app(spec, settings, title="User service", routers=[api.router])
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
