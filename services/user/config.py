from __future__ import annotations

from datetime import timedelta

from pydantic import model_validator

from services.registry import get
from shared.runtime.settings import service_settings


class UserSettings(service_settings("user", port=get("user").port)):  # type: ignore[misc]
    token_ttl_minutes: float = 15
    """How long an access token lives; a retired key is published that much longer."""
    key_propagation_seconds: float = 10
    """How long a new signing key is published before it signs: the time every service
    has to consume it."""
    token_rate_per_address: float = 10.0
    """Sign-in attempts per client address and second, whatever their outcome..."""
    token_address_burst: float = 50
    """... in bursts of this many."""
    token_failure_rate: float = 0.1
    """Failed sign-ins per account and client address a second (one in ten seconds)...
    Someone guessing an account's password from one address does not lock its owner out
    from another."""
    token_failure_burst: float = 10
    """... in bursts of this many."""
    register_rate_per_address: float = 1.0
    """Accounts opened per client address a second (each costs an Argon2 hash)..."""
    register_burst: float = 10
    """... in bursts of this many."""
    operator_email: str = "operator@example.com"
    operator_password_file: str = ""
    """If set and the file exists, the operator account signs in with its contents."""
    key_encryption_key_file: str = ""
    """32 random bytes, base64url: the key the signing keys' private halves are sealed
    with in the database (services/user/keystore.py). Required."""
    keyset_signing_key_file: str = ""
    """The trust anchor's private half (Ed25519, PKCS#8 PEM): signs every published
    `signing-keys` set. Required."""
    cors_origins: list[str] = [
        f"http://{host}:{port}" for host in ("127.0.0.1", "localhost") for port in range(8001, 8010)
    ]
    """Pages that may ask for a token from a browser: every service's Swagger UI."""

    @model_validator(mode="after")
    def _tokens_are_accepted(self) -> UserSettings:
        if self.token_ttl_minutes > self.auth_max_token_ttl_minutes:
            raise ValueError(
                f"USER_TOKEN_TTL_MINUTES ({self.token_ttl_minutes:g}) is over"
                f" AUTH_MAX_TOKEN_TTL_MINUTES ({self.auth_max_token_ttl_minutes:g}):"
                " every service would refuse the tokens"
            )
        return self

    @property
    def token_ttl(self) -> timedelta:
        return timedelta(minutes=self.token_ttl_minutes)

    @property
    def key_propagation(self) -> timedelta:
        return timedelta(seconds=self.key_propagation_seconds)
