from __future__ import annotations

from services.user.models import Base
from shared.storage.migrations import run_migrations

run_migrations(Base.metadata)
