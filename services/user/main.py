"""The user service: registration, and notifications kept from order's events.

Run: uvicorn services.user.main:create_app --factory"""

from __future__ import annotations

from pathlib import Path

from services.user import api
from services.user.config import UserSettings
from services.user.consumers import events
from services.user.events import PUBLISHES
from services.user.models import Base
from shared.runtime.app import app_factory
from shared.runtime.service import ServiceSpec
from shared.storage.tables import shared_tables

SPEC = ServiceSpec(
    name="user",
    router=events,
    publishes=PUBLISHES,
    tables=shared_tables(Base),
    migrations=Path(__file__).parent / "migrations",
)


create_app = app_factory(SPEC, UserSettings, title="User service", routers=[api.router])
