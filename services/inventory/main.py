"""The inventory service: owns stock, reserves it for orders and releases it on cancel.

Run: `python -m services inventory` (services/__main__.py: host, port, workers)."""

from __future__ import annotations

from pathlib import Path

from services.inventory import api
from services.inventory.config import InventorySettings
from services.inventory.consumers import events
from services.inventory.events import PUBLISHES
from services.inventory.models import Base
from shared.runtime.app import app_factory
from shared.runtime.service import ServiceSpec
from shared.storage.tables import shared_tables

SPEC = ServiceSpec(
    name="inventory",
    router=events,
    publishes=PUBLISHES,
    tables=shared_tables(Base),
    migrations=Path(__file__).parent / "migrations",
)


create_app = app_factory(SPEC, InventorySettings, title="Inventory service", routers=[api.router])
