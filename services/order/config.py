from __future__ import annotations

from services.registry import get
from shared.runtime.settings import service_settings

OrderSettings = service_settings("order", port=get("order").port)
