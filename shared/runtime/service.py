"""Everything a service runs besides its routes, built in the app's lifespan (never at
import time): engine and migrations, topics, producer, outbox relay, consumer, housekeeping.

A service's main.py describes itself with a `ServiceSpec` and calls `create_service_app`."""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from sqlalchemy import delete, text
from sqlalchemy.orm import Session

from shared.clock import utcnow
from shared.messaging import exporters
from shared.messaging.catchup import CatchUp
from shared.messaging.consumer import ConsumerWorker
from shared.messaging.deadletter import DEAD_LETTERS
from shared.messaging.events import Event
from shared.messaging.health import KafkaHealth, KafkaHealthCheck
from shared.messaging.outbox import OutboxRelay
from shared.messaging.producer import Delivery, EventProducer
from shared.messaging.router import EventRouter
from shared.messaging.topics import ensure_topics, topic_configs
from shared.messaging.unit_of_work import UnitOfWork
from shared.runtime.auth import KeyRing
from shared.runtime.groupcommit import GroupCommit
from shared.runtime.keys import SigningKeys, parse_anchors, trust_anchors, trusted_keys
from shared.runtime.lag import LagCollector
from shared.runtime.limits import RateLimiter
from shared.runtime.memory import return_large_allocations
from shared.runtime.metrics import OutboxCollector, ServiceMetrics
from shared.runtime.settings import ServiceSettings
from shared.storage.db import (
    OutboxMixin,
    ProcessedEventMixin,
    make_engine,
    make_sessions,
    reader,
    writing,
)
from shared.storage.migrations import upgrade
from shared.storage.tables import SharedTables

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceSpec:
    """What makes one service: its name, event handlers, topics, tables and migrations."""

    name: str
    router: EventRouter
    """Its handlers; the topics they consume are what the service subscribes to."""
    publishes: Sequence[type[Event]]
    """The events it emits; their topics are the service's own."""
    tables: SharedTables
    """Its outbox and processed-events tables: `shared_tables(Base)`."""
    migrations: Path
    consumer_config: dict[str, Any] = field(default_factory=dict)
    consumer_linger: float = 0.005
    """Seconds the consumer waits after a batch's first record for more to share its
    transaction. A step of the saga keeps it short: it is on every order's way to its
    outcome. A view nobody waits on lingers longer: a transaction costs the same few
    hundred microseconds for one event as for twenty."""
    on_published: Callable[[Session, list[Delivery]], None] | None = None
    """Runs as the relay marks events sent, with their partitions and offsets."""
    on_start: Callable[[ServiceRuntime], None] | None = None
    """Runs once the database is migrated and the relay runs, before the consumer."""

    @property
    def outbox_model(self) -> type[OutboxMixin]:
        return self.tables.outbox

    @property
    def processed_model(self) -> type[ProcessedEventMixin]:
        return self.tables.processed

    @property
    def subscribes(self) -> list[str]:
        return self.router.topics

    @property
    def owns(self) -> list[str]:
        """The topics it publishes, which no other service writes."""
        return sorted({event.topic for event in self.publishes})


class ServiceRuntime:
    def __init__(self, spec: ServiceSpec, settings: ServiceSettings) -> None:
        self.spec = spec
        self.settings = settings
        self.engine = make_engine(settings.database())
        self.sessions = make_sessions(self.engine)
        self.read_sessions = make_sessions(reader(self.engine))
        self.uow = UnitOfWork(
            self.sessions,
            spec.outbox_model,
            f"/services/{spec.name}",
            settings.topic_prefix,
            read_sessions=self.read_sessions,
        )
        self.keys = KeyRing(
            lambda: trusted_keys(self.read_sessions), max_lifetime=settings.max_token_lifetime
        )
        """The public keys tokens are checked against (shared.runtime.keys)."""
        self.per_subject = RateLimiter(settings.rate_per_subject, 2 * settings.rate_per_subject)
        self.per_address = RateLimiter(settings.rate_per_address, 2 * settings.rate_per_address)
        self.writes = GroupCommit(self.uow, name=spec.name)
        """Where async routes send their writes: one transaction per group of requests."""
        self.producer: EventProducer | None = None
        self.relay: OutboxRelay | None = None
        self.consumer: ConsumerWorker | None = None
        self.catch_up: CatchUp | None = None
        """Whether the consumer has applied the history it found at start (backfill)."""
        self._kafka_health: KafkaHealthCheck | None = None
        self.instruments = ServiceMetrics(spec.name, settings.prometheus_multiproc_dir)
        self.instruments.watch(OutboxCollector(spec.name, lambda: self.relay))
        self.lag: LagCollector | None = None
        if spec.subscribes:
            self.lag = LagCollector(
                spec.name,
                settings.kafka(),
                self.group_id,
                [settings.topic(t) for t in spec.subscribes],
            )
            self.instruments.watch(self.lag)
        self.metrics = self.instruments.registry
        """What /metrics serves."""
        self._stop = threading.Event()
        self._housekeeper: threading.Thread | None = None

    def start(self) -> None:
        spec, settings = self.spec, self.settings
        exporters.configure(spec.name)
        upgrade(self.engine, spec.migrations)
        if SigningKeys.event_type in spec.router.routes:
            self._trust_anchors()
        topics = {*spec.subscribes, *spec.owns, DEAD_LETTERS}
        kafka = settings.kafka()
        ensure_topics(
            kafka,
            [settings.topic(t) for t in topics],
            partitions=settings.topic_partitions,
            replication_factor=settings.topic_replication,
            configs=topic_configs(settings.topic_prefix),
        )
        self.producer = EventProducer(kafka)
        self._kafka_health = KafkaHealthCheck(
            self.producer.metadata,
            [settings.topic(t) for t in (*spec.owns, DEAD_LETTERS)],
            lambda: AdminClient(kafka.config()),
        )
        self.relay = OutboxRelay(
            self.sessions,
            spec.outbox_model,
            self.producer,
            on_published=spec.on_published,
            observer=self.instruments,
            dead_letter_topic=settings.topic(DEAD_LETTERS),
            name=f"{spec.name}-outbox",
        )
        self.relay.start()
        self.writes.start()
        if spec.on_start:
            spec.on_start(self)
        if spec.subscribes:
            self.catch_up = CatchUp(
                kafka, self.group_id, [settings.topic(t) for t in spec.subscribes]
            )
            try:
                self.catch_up.start()
            except KafkaException as exc:
                log.warning("where the topics end is not known yet: %s", exc)
            self.consumer = ConsumerWorker(
                name=spec.name,
                group_id=self.group_id,
                bootstrap=kafka,
                topics=[settings.topic(t) for t in spec.subscribes],
                owned_topics=[settings.topic(t) for t in spec.owns],
                topic_prefix=settings.topic_prefix,
                router=spec.router,
                uow=self.uow,
                processed_model=spec.processed_model,
                # its own producer: dead letters never wait behind the relay's batch
                producer=EventProducer(kafka),
                dead_letter_topic=settings.topic(DEAD_LETTERS),
                config=spec.consumer_config,
                linger=spec.consumer_linger,
                observer=self.instruments,
            )
            self.consumer.start()
        self._housekeeper = threading.Thread(
            target=self._housekeeping, daemon=True, name="housekeeping"
        )
        self._housekeeper.start()
        quiet_garbage_collector()
        return_large_allocations()

    def stop(self) -> None:
        self._stop.set()
        self.writes.stop()
        if self.consumer:
            self.consumer.stop()
        if self.catch_up:
            self.catch_up.close()
        if self.relay:
            self.relay.stop()
        if self.producer:
            self.producer.close()
        exporters.shutdown()
        self.engine.dispose()
        self.instruments.close()
        if self.lag is not None:
            self.lag.close()

    def _trust_anchors(self) -> None:
        """A service that learns signing keys from events trusts only the sets its anchors
        signed; without an anchor it could accept no token, so it refuses to start."""
        settings = self.settings
        try:
            anchors = parse_anchors(settings.keyset_public_key)
        except ValueError as exc:
            raise RuntimeError(f"AUTH_KEYSET_PUBLIC_KEY: {exc}") from None
        if not anchors:
            raise RuntimeError(
                f"AUTH_KEYSET_PUBLIC_KEY is not set: {self.spec.name} would trust no "
                "signing-keys set, so no token. Give it the public half of the key-set "
                "signing key (`make up` makes the pair; README, Configuration)."
            )
        with self.uow() as unit:
            trust_anchors(unit.session, settings.auth_issuer, anchors)
        log.info(
            "trusting the signing-keys sets of %s signed by %s",
            settings.auth_issuer,
            ", ".join(anchors),
        )

    @property
    def group_id(self) -> str:
        return self.settings.consumer_group or self.spec.name

    def readiness(self) -> dict[str, bool]:
        return {
            "database": self._database_ok(),
            "kafka": self.kafka_health().state != "down",
            "consumer": self.consumer is None
            or (self.consumer.alive and time.monotonic() - self.consumer.last_poll < 20),
            "outbox_relay": bool(self.relay and self.relay.alive and self.relay.last_error is None),
            "caught_up": self.catch_up is None or self.catch_up(),
        }

    def kafka_health(self) -> KafkaHealth:
        """How the cluster serves the topics this service publishes to (cached ~1 s)."""
        if self._kafka_health is None:
            return KafkaHealth("down", 0, "not started")
        return self._kafka_health()

    def _database_ok(self) -> bool:
        try:
            with reader(self.engine).connect() as connection:
                connection.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    def purge(self) -> tuple[int, int]:
        """Drop sent outbox rows and processed-event rows older than their retention."""
        settings, model = self.settings, self.spec.processed_model
        outbox_age = timedelta(hours=settings.outbox_retention_hours)
        sent = self.relay.purge(outbox_age) if self.relay else 0
        cutoff = utcnow() - timedelta(hours=settings.processed_retention_hours)
        with writing(self.engine), self.sessions.begin() as session:
            result = session.execute(delete(model).where(model.processed_at < cutoff))
        return sent, int(result.rowcount or 0)  # type: ignore[attr-defined]

    def _housekeeping(self) -> None:
        while not self._stop.wait(600):
            try:
                self.purge()
            except Exception as exc:
                log.warning("housekeeping: %s", exc)


def quiet_garbage_collector() -> None:
    """Keep the cyclic garbage collector off the hot paths.

    What start-up built (modules, engines, compiled statements) lives as long as the
    process: `gc.freeze` takes it out of every later collection. A batch of events
    allocates thousands of small containers; with the default threshold (700) each batch
    triggers many collections, and the older generations rescan every live object. Both
    together cost a relay up to half its time (`python -m tools.bench relay`)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)
