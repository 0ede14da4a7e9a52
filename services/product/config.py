from __future__ import annotations

from services.registry import get
from shared.runtime.settings import service_settings

ProductSettings = service_settings("product", port=get("product").port)
