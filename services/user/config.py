from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from shared.runtime.settings import ServiceSettings


class UserSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="USER_", extra="ignore", validate_by_name=True)

    database_url: str = "sqlite:///.run/data/user.db"
    port: int = 8004
