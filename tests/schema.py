"""A tiny database schema for testing the event library without a service: the shared
outbox and processed-events tables, and room for a test's own table of effects."""

from __future__ import annotations

from sqlalchemy.orm import DeclarativeBase

from shared.storage.db import OutboxMixin, ProcessedEventMixin


class Base(DeclarativeBase):
    pass


class Outbox(OutboxMixin, Base):
    __tablename__ = "outbox"


class Processed(ProcessedEventMixin, Base):
    __tablename__ = "processed_events"
