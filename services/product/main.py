"""The product service: the catalogue, with availability kept from inventory's events.

Run: uvicorn services.product.main:create_app --factory"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.product import api
from services.product.config import ProductSettings
from services.product.consumers import events
from services.product.events import PUBLISHES
from services.product.models import OutboxMessage, ProcessedEvent
from shared.runtime.service import ServiceSpec, create_service_app

SPEC = ServiceSpec(
    name="product",
    router=events,
    publishes=PUBLISHES,
    outbox_model=OutboxMessage,
    processed_model=ProcessedEvent,
    migrations=Path(__file__).parent / "migrations",
)


def create_app(settings: ProductSettings | None = None) -> FastAPI:
    return create_service_app(
        SPEC,
        settings or ProductSettings(),
        title="Product service",
        include=lambda app: app.include_router(api.router),
    )
