from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from shared.runtime.settings import ServiceSettings


class OrderSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ORDER_", extra="ignore", validate_by_name=True)

    database_url: str = "sqlite:///.run/data/order.db"
    port: int = 8001
