"""The order service: accepts orders over REST and drives each through the saga.

Run: `python -m services order` (services/__main__.py: host, port, workers)."""

from __future__ import annotations

from pathlib import Path

from services.order import api, chain
from services.order.config import OrderSettings
from services.order.consumers import events
from services.order.events import PUBLISHES
from services.order.models import Base
from shared.runtime.app import app_factory
from shared.runtime.service import ServiceSpec
from shared.storage.tables import shared_tables

SPEC = ServiceSpec(
    name="order",
    router=events,
    publishes=PUBLISHES,
    tables=shared_tables(Base),
    migrations=Path(__file__).parent / "migrations",
    on_published=chain.file_published,
)


create_app = app_factory(SPEC, OrderSettings, title="Order service", routers=[api.router])
