"""Nobody but the user service can make a service trust a signing key (issue 17, finding 3),
on a secured three-node cluster where every service signs in as its own principal.

The attack: a stolen service password (here the product service's) writes a dead letter
whose value is a forged `signing-keys` set and whose `dlq_topic` names `users`; the routine
redrive, as the `redrive` principal, used to re-publish that value onto `users`, and every
service trusted it. Each test mints an operator token with the attacker's key and asks
inventory to set stock with it: 401 is the only acceptable answer. The same holds for a set
written straight to a topic the thief may write, for a set written onto `users` by anyone
but the user service, and for an old genuine set replayed to roll trust back."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import orjson
import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import create_engine, text

from shared.messaging.deadletter import (
    DEAD_LETTERS,
    H_CONSUMER,
    H_ERROR,
    H_OFFSET,
    H_PARTITION,
    H_REASON,
    H_TOPIC,
    Reason,
)
from shared.messaging.envelope import H_ID, Envelope, KafkaHeaders
from shared.runtime.auth import OPERATOR, mint, public_jwk
from tests.conftest import service_databases
from tests.e2e.conftest import RunningStack, start_stack
from tests.helpers import eventually, read_topic
from tools.local.certs import ADMIN, REDRIVE
from tools.local.cluster import LocalCluster
from tools.local.kafka_security import Topology
from tools.local.stack import PORTS

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
ISSUER = "event-driven-shop"
TTL = timedelta(minutes=15)
CONSUMERS = ("order", "inventory", "product")
"""The services that learn keys from `signing-keys`."""


@pytest.fixture(scope="module")
def victim(
    secure_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Shop]:
    folder: Path = tmp_path_factory.mktemp("forged-keys")
    with service_databases("sqlite", folder, list(PORTS)) as databases:
        running = start_stack(
            "",
            folder,
            "sqlite",
            databases,
            extra_env={"USER_KEY_PROPAGATION_SECONDS": "1"},
            cluster=secure_cluster,
        )
        try:
            product = running.operator.create_product("Brass gear", 1250)["id"]
            running.operator.set_stock_eventually(product, 5, timeout=60)
            yield Shop(running, secure_cluster, databases, product)
        finally:
            running.client.close()
            running.stack.down(kafka=False)


@dataclass
class Shop:
    running: RunningStack
    cluster: LocalCluster
    databases: dict[str, str]
    product: str
    """A product inventory knows, with stock the operator set."""

    @property
    def prefix(self) -> str:
        return self.running.topic_prefix

    def set_stock(self, token: str, available: int) -> httpx.Response:
        return httpx.put(
            f"{self.running.stack.services['inventory'].url}/stock/{self.product}",
            json={"available": available},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )

    def trusted_kids(self, service: str) -> set[str]:
        """The kids in `service`'s `trusted_keys` table: what its KeyRing (re)loads."""
        engine = create_engine(self.databases[service])
        try:
            with engine.connect() as connection:
                return set(connection.execute(text("SELECT kid FROM trusted_keys")).scalars())
        finally:
            engine.dispose()

    def produce_as(
        self, principal: str, topic: str, key: bytes, value: bytes | None, headers: KafkaHeaders
    ) -> tuple[int, int]:
        """Produce one record as `principal`; its partition and offset once acknowledged."""
        producer = Producer(self.cluster.connection(principal).config())
        reports: list[tuple[KafkaError | None, Message]] = []
        producer.produce(
            self.prefix + topic,
            value=value,
            key=key,
            headers=headers,
            on_delivery=lambda error, message: reports.append((error, message)),
        )
        producer.flush(30)
        ((error, message),) = reports
        assert error is None, f"{principal} may write {topic}: {error}"
        return message.partition(), message.offset()

    def consumed(self, topic: str) -> None:
        """Wait until every consumer of keys that reads `topic` has committed past its end
        as it is now: whatever was on it has been handled (applied or dead-lettered)."""
        admin = self.cluster.connection(ADMIN)
        name = self.prefix + topic
        readers = [s for s in CONSUMERS if topic in Topology.of_registry().subscribes[s]]
        assert readers, f"nobody learns keys from {topic}"
        for service in readers:
            probe = Consumer(admin.config(**{"group.id": self.prefix + service}))
            try:
                partitions = probe.list_topics(name, timeout=10).topics[name].partitions
                ends = {
                    p: probe.get_watermark_offsets(TopicPartition(name, p), timeout=10)[1]
                    for p in partitions
                }

                def caught_up(probe: Consumer = probe, ends: dict[int, int] = ends) -> bool:
                    wanted = [TopicPartition(name, p) for p in ends]
                    return all(
                        max(c.offset, 0) >= ends[c.partition]
                        for c in probe.committed(wanted, timeout=10)
                    )

                eventually(caught_up, timeout=90, message=f"{service} consumed {name}")
            finally:
                probe.close()

    def redrive(self, consumer: str) -> str:
        """The routine redrive of `consumer`'s dead letters, as the `redrive` principal."""
        done = subprocess.run(
            [sys.executable, "-m", "tools.ops.redrive", "--topic-prefix", self.prefix]
            + ["--consumer", consumer],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **self.cluster.client_env(REDRIVE)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout


@dataclass
class Attacker:
    """An Ed25519 key of the attacker's own, and the set that would make services trust it."""

    key: Ed25519PrivateKey
    kid: str

    @classmethod
    def new(cls) -> Attacker:
        return cls(Ed25519PrivateKey.generate(), f"k-{uuid.uuid4().hex[:12]}")

    def forged_set(self) -> bytes:
        """A `signing-keys` payload with the attacker's key, a version newer than any the
        user service issued and a signature by the attacker's key (the best it can do)."""
        keys = [{"jwk": public_jwk(self.kid, self.key.public_key()), "not_after": None}]
        version = int(time.time() * 1000) + 10**9
        body = orjson.dumps(
            {"issuer": ISSUER, "version": version, "keys": keys}, option=orjson.OPT_SORT_KEYS
        )
        signature = base64.urlsafe_b64encode(self.key.sign(body)).rstrip(b"=").decode()
        return orjson.dumps(
            {"issuer": ISSUER, "keys": keys, "version": version, "signature": signature}
        )

    def event(self) -> Envelope:
        """The forged set as a CloudEvent that claims to come from the user service."""
        return Envelope(
            type="signing-keys", source="/services/user", key=ISSUER, data=self.forged_set()
        )

    def operator_token(self) -> str:
        return mint(
            self.key, self.kid, "the-attacker", issuer=ISSUER, ttl=TTL, scopes=frozenset({OPERATOR})
        )


def refused(victim: Shop, attacker: Attacker) -> None:
    for service in CONSUMERS:
        assert attacker.kid not in victim.trusted_kids(service), f"{service} trusts it"
    answer = victim.set_stock(attacker.operator_token(), 999)
    assert answer.status_code == 401, (answer.status_code, answer.text)
    assert victim.running.operator.stock(victim.product)["available"] != 999


def test_a_forged_set_parked_as_a_dead_letter_is_not_trusted_after_the_routine_redrive(
    victim: Shop,
) -> None:
    attacker = Attacker.new()
    forged = attacker.event()
    headers = forged.headers() + [
        (H_REASON, Reason.HANDLER_FAILED.encode()),
        (H_ERROR, b"downstream is broken"),
        (H_TOPIC, (victim.prefix + "users").encode()),
        (H_PARTITION, b"0"),
        (H_OFFSET, b"0"),
        (H_CONSUMER, b"inventory"),
    ]
    victim.produce_as("product", DEAD_LETTERS, ISSUER.encode(), forged.data, headers)

    said = victim.redrive("inventory")
    victim.consumed("users")

    refused(victim, attacker)
    assert "re-published 0 dead-lettered" in said and "skipped 1: " in said, said
    assert victim.running.operator.set_stock(victim.product, 7)["available"] == 7, (
        "the genuine keys are still trusted"
    )


def test_a_forged_set_written_to_a_topic_the_thief_owns_is_not_trusted(victim: Shop) -> None:
    attacker = Attacker.new()
    forged = attacker.event()
    victim.produce_as("product", "products", ISSUER.encode(), forged.data, forged.headers())
    victim.consumed("products")

    refused(victim, attacker)


def test_a_forged_set_written_to_users_by_another_principal_is_not_trusted(victim: Shop) -> None:
    attacker = Attacker.new()
    forged = attacker.event()
    victim.produce_as(REDRIVE, "users", ISSUER.encode(), forged.data, forged.headers())
    victim.consumed("users")

    refused(victim, attacker)


def test_an_old_genuine_set_replayed_does_not_roll_trust_back(victim: Shop) -> None:
    operator = victim.running.operator
    sets = read_topic(
        victim.cluster.connection(ADMIN),
        victim.prefix + "users",
        until=lambda got: any(_type(m) == b"signing-keys" for m in got),
    )
    old = next(m for m in sets if _type(m) == b"signing-keys")
    old_kid = orjson.loads(old.value() or b"")["keys"][-1]["jwk"]["kid"]
    rotated = operator.request("POST", "user", "/keys/rotate")
    assert rotated.status_code == 204, rotated.text

    def new_token() -> str | None:
        token = victim.running.client.sign_in(
            "operator@example.com",
            victim.running.stack.operator_password_file.read_text().strip(),
        ).token
        assert token is not None
        return token if _kid(token) != old_kid else None

    token = eventually(new_token, timeout=60, interval=0.5, message="the new key signs")
    eventually(
        lambda: victim.set_stock(token, 11).status_code == 200,
        timeout=60,
        message="inventory learns the rotated set",
    )

    replay = [(n, v) for n, v in old.headers() or [] if n != H_ID]
    replay.append((H_ID, str(uuid.uuid4()).encode()))  # a fresh id: not a mere duplicate
    victim.produce_as(REDRIVE, "users", old.key() or b"", old.value(), replay)
    victim.consumed("users")

    new_kid = _kid(token)
    for service in CONSUMERS:
        assert new_kid in victim.trusted_kids(service), f"{service} rolled back to the old set"
    answer = victim.set_stock(token, 12)
    assert answer.status_code == 200, ("the new key is still trusted", answer.text)


def _type(message: Message) -> bytes | None:
    return dict(message.headers() or []).get("ce_type")


def _kid(token: str) -> str:
    header = token.split(".")[0]
    return str(orjson.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"])
