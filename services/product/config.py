from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from shared.runtime.settings import ServiceSettings


class ProductSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="PRODUCT_", extra="ignore", validate_by_name=True)

    database_url: str = "sqlite:///.run/data/product.db"
    port: int = 8003
