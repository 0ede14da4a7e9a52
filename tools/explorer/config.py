"""The explorer's settings: the stack's broker and topic prefix (shared with the services),
and its own under `EXPLORER_`."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_PORT = 8090


class ExplorerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EXPLORER_", extra="ignore", validate_by_name=True)

    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092", validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS")
    )
    topic_prefix: str = Field("", validation_alias=AliasChoices("TOPIC_PREFIX"))
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    tail: int = Field(5000, ge=0)
    """How many records before each partition's end to start reading from."""
    max_orders: int = Field(200, ge=1)
    """How many orders it remembers (the most recent)."""
