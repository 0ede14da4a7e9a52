"""The settings every service has. `service_settings` makes a service's class with its own
env prefix (`ORDER_DATABASE_URL`, `INVENTORY_PORT`, ...); the broker address and topic
prefix are shared by all (`KAFKA_BOOTSTRAP_SERVERS`, `TOPIC_PREFIX`), and so is how the
service signs in to Kafka (`KAFKA_SECURITY_PROTOCOL`, `KAFKA_SASL_USERNAME`,
`KAFKA_SASL_PASSWORD_FILE`, `KAFKA_SSL_CA_LOCATION`: one process, one principal). A
service's database password is read from a file too (`ORDER_DATABASE_PASSWORD_FILE`).
Nothing else reads os.environ."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import URL, make_url

from shared.messaging.connection import SCRAM, KafkaConnection
from shared.runtime.proxy import Network, parse_networks


class KafkaSettings(BaseSettings):
    """Where the stack's Kafka is and how to sign in to it: what every client of the
    stack reads, the services and the tools alike."""

    model_config = SettingsConfigDict(extra="ignore", validate_by_name=True)

    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092", validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS")
    )
    topic_prefix: str = Field("", validation_alias=AliasChoices("TOPIC_PREFIX"))
    topic_partitions: int = Field(3, ge=1, validation_alias=AliasChoices("TOPIC_PARTITIONS"))
    topic_replication: int | None = Field(
        None, ge=1, validation_alias=AliasChoices("TOPIC_REPLICATION")
    )
    """Copies of each topic the service creates; unset: the cluster's size, up to three."""
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", validation_alias=AliasChoices("KAFKA_SECURITY_PROTOCOL")
    )
    kafka_sasl_mechanism: str = Field(SCRAM, validation_alias=AliasChoices("KAFKA_SASL_MECHANISM"))
    kafka_sasl_username: str | None = Field(
        None, validation_alias=AliasChoices("KAFKA_SASL_USERNAME")
    )
    kafka_sasl_password_file: Path | None = Field(
        None, validation_alias=AliasChoices("KAFKA_SASL_PASSWORD_FILE")
    )
    """A file holding the password (a mounted secret), never the password itself."""
    kafka_ssl_ca_location: str | None = Field(
        None, validation_alias=AliasChoices("KAFKA_SSL_CA_LOCATION")
    )

    def topic(self, name: str) -> str:
        return self.topic_prefix + name

    def kafka(self) -> KafkaConnection:
        """How this process reaches Kafka; the password file is read here, at start-up."""
        password = None
        if self.kafka_sasl_password_file is not None:
            try:
                password = self.kafka_sasl_password_file.read_text().strip()
            except OSError as exc:
                raise RuntimeError(f"KAFKA_SASL_PASSWORD_FILE unreadable: {exc}") from exc
        return KafkaConnection(
            self.kafka_bootstrap_servers,
            self.kafka_security_protocol,
            self.kafka_sasl_mechanism,
            self.kafka_sasl_username,
            password,
            self.kafka_ssl_ca_location,
        )


MAX_PASSWORD = 1024


class ServiceSettings(KafkaSettings):
    model_config = SettingsConfigDict(extra="ignore", validate_by_name=True)

    database_url: str = "sqlite:///.run/data/service.db"
    database_password_file: Path | None = None
    """A file holding the password of `database_url` (a mounted secret), which then
    names none: the password never sits in the environment."""
    host: str = "127.0.0.1"
    port: int = 8000
    consumer_group: str | None = None
    """Defaults to the service name; tests give each run its own."""
    max_body_bytes: int = 64 * 1024
    processed_retention_hours: float = 24 * 30
    """Keep processed ids longer than a record can stay on an event topic (retention plus
    a segment's age) and longer than a group's offsets live, or a replay could re-apply.
    A compacted state topic keeps its newest records for good: its consumers apply one
    again harmlessly (shared/messaging/topics.py)."""
    outbox_retention_hours: float = 24
    prometheus_multiproc_dir: str | None = Field(
        None, validation_alias=AliasChoices("PROMETHEUS_MULTIPROC_DIR")
    )
    """Where the worker processes of one service keep their counters (prometheus_client
    reads it too, at import): set when a service runs several, unset for one."""

    log_format: Literal["json", "text"] = Field("json", validation_alias=AliasChoices("LOG_FORMAT"))
    """JSON lines (service, level, trace, span, event) or a human format."""

    auth_issuer: str = Field("event-driven-shop", validation_alias=AliasChoices("AUTH_ISSUER"))
    """The `iss` every token must carry."""
    keyset_public_key: str = Field(
        "", max_length=1000, validation_alias=AliasChoices("AUTH_KEYSET_PUBLIC_KEY")
    )
    """The trust anchor: the public half of the key that signs the user service's
    `signing-keys` sets, base64url of the raw 32-byte Ed25519 key (several, comma-separated,
    while it is rotated). A service that learns keys from events does not start without
    it (shared.runtime.keys)."""
    auth_max_token_ttl_minutes: float = Field(
        60, gt=0, validation_alias=AliasChoices("AUTH_MAX_TOKEN_TTL_MINUTES")
    )
    """The longest a token may live (`exp - iat`); a longer one is refused."""
    token_url: str = Field(
        "http://127.0.0.1:8004/token", validation_alias=AliasChoices("AUTH_TOKEN_URL")
    )
    """Where clients get a token (the user service): Swagger UI's Authorize button."""
    rate_per_subject: float = 50.0
    """Limited writes (placing orders, getting tokens) a caller may make per second, in
    bursts of twice that."""
    rate_per_address: float = 1000.0
    """The same per client address."""
    forwarded_allow_ips: str = Field("", validation_alias=AliasChoices("FORWARDED_ALLOW_IPS"))
    """The proxies whose `X-Forwarded-For` names the client (comma-separated addresses or
    networks); empty: nobody's, the peer is the client (shared.runtime.proxy)."""
    shutdown_grace_seconds: float = Field(
        1.0, ge=0, validation_alias=AliasChoices("SHUTDOWN_GRACE_SECONDS")
    )
    """After SIGTERM, how long an instance keeps serving while `/ready` answers 503, so a
    load balancer takes it out of rotation before it stops accepting (shared.runtime.server)."""

    def database(self) -> URL:
        """The database to connect to: `database_url`, with the password of
        `database_password_file` filled in; the file is read here, at start-up."""
        url = make_url(self.database_url)
        if self.database_password_file is None:
            return url
        variable = f"{self.model_config.get('env_prefix', '')}DATABASE_PASSWORD_FILE".upper()
        if url.get_backend_name() == "sqlite":
            raise ValueError(f"{variable} is set, but SQLite takes no password")
        if url.password is not None:
            raise ValueError(f"{variable} is set and the database URL holds a password: not both")
        try:
            raw = self.database_password_file.read_bytes()
        except OSError as exc:
            raise RuntimeError(f"{variable} unreadable: {exc.strerror}") from None
        return url.set(password=_one_password(raw, variable))

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _networks(cls, value: str) -> str:
        parse_networks(value)
        return value

    @property
    def trusted_proxies(self) -> tuple[Network, ...]:
        return parse_networks(self.forwarded_allow_ips)

    @property
    def max_token_lifetime(self) -> timedelta:
        return timedelta(minutes=self.auth_max_token_ttl_minutes)


def _one_password(raw: bytes, variable: str) -> str:
    """The single line a password file holds (one trailing newline allowed)."""
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise ValueError(f"{variable}: the file is not UTF-8") from None
    text = text.removesuffix("\n").removesuffix("\r")
    if not text.strip():
        raise ValueError(f"{variable}: the file is empty")
    if "\n" in text:
        raise ValueError(f"{variable}: the file holds more than one line")
    if any(ord(char) < 32 or ord(char) == 127 for char in text):
        raise ValueError(f"{variable}: the password holds a control character")
    if len(text) > MAX_PASSWORD:
        raise ValueError(f"{variable}: the password is longer than {MAX_PASSWORD} characters")
    return text


def service_settings(name: str, *, port: int) -> type[ServiceSettings]:
    """`OrderSettings = service_settings("order", port=8001)`: env prefix `ORDER_`, SQLite
    in `.run/data/order.db` unless `ORDER_DATABASE_URL` says otherwise, port 8001.
    Subclass the result to add a service's own fields."""
    camel = "".join(part.capitalize() for part in name.split("_"))
    namespace = {
        "__module__": sys._getframe(1).f_globals.get("__name__", __name__),
        "__qualname__": f"{camel}Settings",
        "__annotations__": {"database_url": str, "port": int},
        "model_config": SettingsConfigDict(
            env_prefix=f"{name.upper()}_", extra="ignore", validate_by_name=True
        ),
        "database_url": f"sqlite:///.run/data/{name}.db",
        "port": port,
    }
    return type(f"{camel}Settings", (ServiceSettings,), namespace)
