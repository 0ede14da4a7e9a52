"""The product service: the catalogue, with availability kept from inventory's events.

Run: `python -m services product` (services/__main__.py: host, port, workers)."""

from __future__ import annotations

from pathlib import Path

from services.product import api
from services.product.config import ProductSettings
from services.product.consumers import events
from services.product.events import PUBLISHES
from services.product.models import Base
from shared.runtime.app import app_factory
from shared.runtime.service import ServiceSpec
from shared.storage.tables import shared_tables

SPEC = ServiceSpec(
    name="product",
    router=events,
    publishes=PUBLISHES,
    tables=shared_tables(Base),
    migrations=Path(__file__).parent / "migrations",
    consumer_linger=0.05,  # its views: no order waits for them
)


create_app = app_factory(SPEC, ProductSettings, title="Product service", routers=[api.router])
