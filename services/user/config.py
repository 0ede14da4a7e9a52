from __future__ import annotations

from services.registry import get
from shared.runtime.settings import service_settings

UserSettings = service_settings("user", port=get("user").port)
