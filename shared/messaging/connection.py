"""How a client reaches the cluster: the bootstrap servers and, on a secured cluster, the
SASL identity and the CA that signed the brokers' certificates.

Every function that opens a Kafka client takes `Bootstrap`: a bare `host:port[,...]`
string means PLAINTEXT, a `KafkaConnection` carries the rest."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

SCRAM = "SCRAM-SHA-512"


@dataclass(frozen=True)
class KafkaConnection:
    bootstrap: str
    security_protocol: str = "PLAINTEXT"
    """PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."""
    sasl_mechanism: str = SCRAM
    username: str | None = None
    password: str | None = None
    ca_location: str | None = None
    """PEM file of the CA to trust; None trusts the system's CAs."""
    client_pem: str | None = None
    """PEM file with a client key and certificate, for mutual TLS (SSL) instead of SASL."""

    @property
    def sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.security_protocol.endswith("SSL")

    def config(self, **extra: Any) -> dict[str, Any]:
        """librdkafka settings for this connection, `extra` on top."""
        config: dict[str, Any] = {"bootstrap.servers": self.bootstrap}
        if self.security_protocol != "PLAINTEXT":
            config["security.protocol"] = self.security_protocol
        if self.sasl:
            config["sasl.mechanism"] = self.sasl_mechanism
            config["sasl.username"] = self.username or ""
            config["sasl.password"] = self.password or ""
        if self.tls and self.ca_location:
            config["ssl.ca.location"] = self.ca_location
        if self.tls and self.client_pem:
            config["ssl.certificate.location"] = self.client_pem
            config["ssl.key.location"] = self.client_pem
        config.update(extra)
        return config

    def as_user(self, username: str, password: str) -> KafkaConnection:
        """The same cluster under another SASL identity."""
        return replace(self, username=username, password=password)

    def __repr__(self) -> str:  # never print a password
        who = f" as {self.username}" if self.sasl else ""
        return f"KafkaConnection({self.bootstrap} {self.security_protocol}{who})"


Bootstrap = str | KafkaConnection


def connection(bootstrap: Bootstrap) -> KafkaConnection:
    return bootstrap if isinstance(bootstrap, KafkaConnection) else KafkaConnection(bootstrap)


def client_config(bootstrap: Bootstrap, **extra: Any) -> dict[str, Any]:
    """librdkafka settings for `bootstrap` (a string: PLAINTEXT), `extra` on top."""
    return connection(bootstrap).config(**extra)
