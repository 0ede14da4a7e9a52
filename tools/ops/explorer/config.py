"""The explorer's settings: the stack's Kafka, topic prefix and sign-in (shared with the
services: `KAFKA_*`, `TOPIC_PREFIX`), and its own under `EXPLORER_`."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, field_validator
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
    lag_every: float = Field(5.0, gt=0, le=3600)
    """Seconds between two samples of each group's lag (the page's lag graph)."""
    lag_points: int = Field(360, ge=2, le=100_000)
    """Samples kept per group: 360 at 5 s are the last 30 minutes."""
    search_timeout: float = Field(15.0, gt=0, le=300)
    """Seconds a search may wait for the broker to send records still to be read."""
    trace_url: str | None = Field(None, max_length=2048)
    """Where a trace is shown, `{trace_id}` standing for its id (e.g.
    `http://127.0.0.1:9411/zipkin/traces/{trace_id}`): an order whose trace was sampled
    links there. Unset: no link."""
    redrive_password_file: Path | None = None
    """On a secured cluster: the `redrive` principal's password, which the redrive button
    signs in with (the explorer itself reads as the observer, which may write nothing)."""

    @field_validator("trace_url")
    @classmethod
    def _a_trace_address(cls, value: str | None) -> str | None:
        """An http(s) address with `{trace_id}` once and no other braces, or empty."""
        if not value:
            return None
        parsed, rest = urlsplit(value), value.replace("{trace_id}", "", 1)
        if (
            parsed.scheme not in ("http", "https")
            or not parsed.netloc
            or "{" in rest
            or "}" in rest
            or rest == value
            or any(not c.isprintable() or c.isspace() for c in value)
        ):
            raise ValueError(
                "EXPLORER_TRACE_URL must be an http(s) address holding {trace_id} once,"
                " e.g. http://127.0.0.1:9411/zipkin/traces/{trace_id}"
            )
        return value

    def redrive_kafka(self) -> Bootstrap:
        """How a redrive reaches the cluster: as `redrive` when its password is given."""
        kafka = self.kafka()
        if self.redrive_password_file is None:
            return kafka
        return kafka.as_user(REDRIVE, self.redrive_password_file.read_text().strip())
