"""The explorer's settings: the stack's Kafka, topic prefix and sign-in (shared with the
services: `KAFKA_*`, `TOPIC_PREFIX`), and its own under `EXPLORER_`."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.messaging.connection import Bootstrap
from shared.runtime.settings import KafkaSettings
from tools.local.certs import REDRIVE

DEFAULT_PORT = 8090


class ExplorerSettings(KafkaSettings):
    model_config = SettingsConfigDict(env_prefix="EXPLORER_", extra="ignore", validate_by_name=True)

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    tail: int = Field(5000, ge=0)
    """How many records before each partition's end to start reading from."""
    max_orders: int = Field(200, ge=1)
    """How many orders it remembers (the most recent)."""
    redrive_password_file: Path | None = None
    """On a secured cluster: the `redrive` principal's password, which the redrive button
    signs in with (the explorer itself reads as the observer, which may write nothing)."""

    def redrive_kafka(self) -> Bootstrap:
        """How a redrive reaches the cluster: as `redrive` when its password is given."""
        kafka = self.kafka()
        if self.redrive_password_file is None:
            return kafka
        return kafka.as_user(REDRIVE, self.redrive_password_file.read_text().strip())
