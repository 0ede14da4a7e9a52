"""The inventory service: owns stock, reserves it for orders and releases it on cancel.

Run: uvicorn services.inventory.main:create_app --factory"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.inventory import api
from services.inventory.config import InventorySettings
from services.inventory.consumers import events
from services.inventory.events import PUBLISHES
from services.inventory.models import OutboxMessage, ProcessedEvent
from shared.runtime.service import ServiceSpec, create_service_app

SPEC = ServiceSpec(
    name="inventory",
    router=events,
    publishes=PUBLISHES,
    outbox_model=OutboxMessage,
    processed_model=ProcessedEvent,
    migrations=Path(__file__).parent / "migrations",
)


def create_app(settings: InventorySettings | None = None) -> FastAPI:
    return create_service_app(
        SPEC,
        settings or InventorySettings(),
        title="Inventory service",
        include=lambda app: app.include_router(api.router),
    )
