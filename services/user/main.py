"""The user service: registration, and notifications kept from order's events.

Run: uvicorn services.user.main:create_app --factory"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.user import api
from services.user.config import UserSettings
from services.user.consumers import events
from services.user.events import PUBLISHES
from services.user.models import OutboxMessage, ProcessedEvent
from shared.runtime.service import ServiceSpec, create_service_app

SPEC = ServiceSpec(
    name="user",
    router=events,
    publishes=PUBLISHES,
    outbox_model=OutboxMessage,
    processed_model=ProcessedEvent,
    migrations=Path(__file__).parent / "migrations",
)


def create_app(settings: UserSettings | None = None) -> FastAPI:
    return create_service_app(
        SPEC,
        settings or UserSettings(),
        title="User service",
        include=lambda app: app.include_router(api.router),
    )
