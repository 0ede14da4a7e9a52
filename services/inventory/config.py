from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from shared.runtime.settings import ServiceSettings


class InventorySettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="INVENTORY_", extra="ignore", validate_by_name=True
    )

    database_url: str = "sqlite:///.run/data/inventory.db"
    port: int = 8002
