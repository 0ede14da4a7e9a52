from __future__ import annotations

from datetime import timedelta

from services.registry import get
from shared.runtime.settings import service_settings


class UserSettings(service_settings("user", port=get("user").port)):  # type: ignore[misc]
    token_ttl_minutes: float = 15
    """How long an access token lives; a retired key is published that much longer."""
    key_propagation_seconds: float = 10
    """How long a new signing key is published before it signs: the time every service
    has to consume it."""
    token_rate_per_account: float = 1.0
    """Sign-in attempts per e-mail address and second, in bursts of ten."""
    token_rate_per_address: float = 10.0
    """Sign-in attempts per client address and second, in bursts of five times that."""
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

    @property
    def token_ttl(self) -> timedelta:
        return timedelta(minutes=self.token_ttl_minutes)

    @property
    def key_propagation(self) -> timedelta:
        return timedelta(seconds=self.key_propagation_seconds)
