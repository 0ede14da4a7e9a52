"""The user service's event contract: what it publishes and what it consumes.

Consumed payloads declare only the fields the service reads and ignore the rest, so
publishers can add fields freely; `contracts/` holds what each publisher promises."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from shared.messaging.events import Event
from shared.runtime.keys import MAX_VERSION, SIGNATURE_PATTERN


class UserRegistered(Event, type="user-registered", topic="users", key="user_id"):
    """A new account. `version` grows with every change of one user."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "user_id": "0b7e4d2a-3c5f-4e8a-b1d9-6f2a7c8e4b35",
                    "name": "Ada Lovelace",
                    "email": "ada@example.com",
                    "version": 1,
                }
            ]
        }
    )

    user_id: str = Field(description="The user's id: the key.")
    name: str = Field(description="The name the user registered with.")
    email: str = Field(description="The user's email address, unique among users.")
    version: int = Field(1, description="Grows with every change of the user.")


class PublishedKey(BaseModel):
    jwk: dict[str, str] = Field(
        description="An Ed25519 public key as a JWK (RFC 8037), with its `kid`."
    )
    not_after: datetime | None = Field(
        default=None,
        description="Once the key is retired: when the last token it signed expires.",
    )


class SigningKeys(Event, type="signing-keys", topic="users", key="issuer"):
    """The public keys access tokens are signed with: every service checks tokens against
    the newest set it has consumed whose signature verifies. Published at start-up and on
    every rotation."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "issuer": "event-driven-shop",
                    "keys": [
                        {
                            "jwk": {
                                "kty": "OKP",
                                "crv": "Ed25519",
                                "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
                                "kid": "k-20261130-1a2b3c",
                                "alg": "EdDSA",
                                "use": "sig",
                            },
                            "not_after": None,
                        }
                    ],
                    "version": 1796380800000,
                    "signature": "32iYiw__AwRhqYVsydi1ihtEczkfaZCQbz41lh5qGyGhnz0flLmPr4-SLgti9"
                    "QUKQyaLpHzYP6dBxiA0WhWtDA",
                }
            ]
        }
    )

    issuer: str = Field(description="The `iss` of the tokens these keys sign: the key.")
    keys: list[PublishedKey] = Field(min_length=1, description="Every key a token may name.")
    version: int = Field(
        ge=1,
        le=MAX_VERSION,
        description="Grows with every set the issuer publishes (the milliseconds since the"
        " epoch when it was issued, or one more than the last): a service refuses a set no"
        " newer than the one it trusts.",
    )
    signature: str = Field(
        pattern=SIGNATURE_PATTERN,
        description="Ed25519 signature, base64url without padding, by the key-set signing"
        " key (the trust anchor every service is configured with) over the issuer, version"
        " and keys (shared.runtime.keys.keyset_message). A set it does not verify is"
        " refused.",
    )


PUBLISHES = (UserRegistered, SigningKeys)


# Consumed from `orders` (published by order), keyed by order id.


class OrderConfirmed(Event, type="order-confirmed", topic="orders", key="order_id"):
    order_id: str = Field(min_length=1, max_length=64)
    user_id: str = Field(min_length=1, max_length=64)


class Shortage(BaseModel):
    product_id: str
    requested: int
    available: int


class OrderRejected(Event, type="order-rejected", topic="orders", key="order_id"):
    order_id: str = Field(min_length=1, max_length=64)
    user_id: str = Field(min_length=1, max_length=64)
    reason: str
    shortages: list[Shortage] = Field(default_factory=list)


class OrderCancelled(Event, type="order-cancelled", topic="orders", key="order_id"):
    order_id: str = Field(min_length=1, max_length=64)
    user_id: str = Field(min_length=1, max_length=64)
