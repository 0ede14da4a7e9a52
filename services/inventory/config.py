from __future__ import annotations

from services.registry import get
from shared.runtime.settings import service_settings

InventorySettings = service_settings("inventory", port=get("inventory").port)
