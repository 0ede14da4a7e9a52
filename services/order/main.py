"""The order service: accepts orders over REST and drives each through the saga.

Run: uvicorn services.order.main:create_app --factory"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.order import api, handlers
from services.order.config import OrderSettings
from services.order.consumers import events
from services.order.events import PUBLISHES
from services.order.models import OutboxMessage, ProcessedEvent
from shared.runtime.service import ServiceSpec, create_service_app

SPEC = ServiceSpec(
    name="order",
    router=events,
    publishes=PUBLISHES,
    outbox_model=OutboxMessage,
    processed_model=ProcessedEvent,
    migrations=Path(__file__).parent / "migrations",
    on_published=handlers.file_published,
)


def create_app(settings: OrderSettings | None = None) -> FastAPI:
    return create_service_app(
        SPEC,
        settings or OrderSettings(),
        title="Order service",
        include=lambda app: app.include_router(api.router),
    )
