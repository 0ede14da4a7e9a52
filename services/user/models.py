from __future__ import annotations

from datetime import datetime

from sqlalchemy import String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.clock import utcnow
from shared.storage.db import BigId, UtcDateTime
from shared.storage.tables import shared_tables


class Base(DeclarativeBase):
    pass


OutboxMessage, ProcessedEvent, TrustedKey, TrustedKeySet = shared_tables(Base)


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(254), unique=True)
    """Stored lower-cased; the unique key decides who registered an address first."""
    password_hash: Mapped[str] = mapped_column(String(255), default="", server_default="")
    """Argon2id, in its own encoding; empty for an account that cannot sign in."""
    scopes: Mapped[str] = mapped_column(String(255), default="", server_default="")
    """Space-separated, as tokens carry them (`operator`)."""
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class Notification(Base):
    """What a user is told about their orders: one row per order outcome.

    No foreign key to `users`: an outcome is worth keeping whatever we know of the user."""

    __tablename__ = "notifications"
    __table_args__ = (UniqueConstraint("order_id", "type", name="uq_notifications_order_type"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(64), index=True)
    order_id: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class SigningKey(Base):
    """A private key of the service's own, for signing access tokens. The newest one not
    retired signs; a retired one is still published until its last token expires."""

    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    private_key: Mapped[str] = mapped_column(Text)
    """The PKCS#8 PEM sealed with the key-encryption key: `v1:<nonce>:<ciphertext>`
    (services/user/keystore.py)."""
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    retired_at: Mapped[datetime | None] = mapped_column(UtcDateTime, default=None)
