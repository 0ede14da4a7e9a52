"""The secured cluster refuses what the ACL plan does not allow and whoever cannot sign in,
and replicates the stack's topics three times with two in sync for a write.

Runs on a three-node cluster of its own (the `secure_cluster` fixture), not on the
plaintext broker of the other integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from shared.messaging.connection import KafkaConnection
from shared.messaging.deadletter import H_CONSUMER, H_OFFSET, H_PARTITION, H_REASON, H_TOPIC
from shared.messaging.envelope import H_ID, Envelope
from shared.messaging.producer import DeliveryError, EventProducer
from shared.messaging.redrive import redrive
from shared.messaging.topics import TOPICS, ensure_topics
from tests.helpers import eventually, read_topic, unique
from tools.local import kafka_security
from tools.local.certs import ADMIN, OBSERVER, REDRIVE
from tools.local.cluster import LocalCluster, describe_cluster
from tools.local.kafka_security import Topology, principals, secure_stack
from tools.ops import offsets

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEADLINE = 30


@dataclass
class Secured:
    cluster: LocalCluster
    prefix: str

    def as_user(self, principal: str) -> KafkaConnection:
        return self.cluster.connection(principal)

    def topic(self, name: str) -> str:
        return self.prefix + name


@pytest.fixture(scope="module")
def secured(secure_cluster: LocalCluster) -> Secured:
    """A stack's topics, principals and ACLs, as `make up` makes them, under a new prefix."""
    prefix = unique("sec") + "-"
    topology = Topology.of_registry()
    passwords = {name: secure_cluster.password(name) for name in principals(topology)}
    secure_stack(secure_cluster.connection(ADMIN), prefix, passwords, topology)
    return Secured(secure_cluster, prefix)


@pytest.fixture
def producers() -> Iterator[list[EventProducer]]:
    made: list[EventProducer] = []
    yield made
    for producer in made:
        producer.close(1)


def produce(
    producers: list[EventProducer], connection: KafkaConnection, topic: str, **overrides: object
) -> KafkaError | None:
    """Produce one record; None if acknowledged, else the error."""
    producer = EventProducer(connection, **{"message.timeout.ms": 15_000, **overrides})
    producers.append(producer)
    try:
        producer.produce_raw(topic, b"{}", b"key", timeout=DEADLINE)
    except DeliveryError as exc:
        return exc.error if isinstance(exc.error, KafkaError) else None
    except KafkaException as exc:
        return exc.args[0]
    return None


def first_error(connection: KafkaConnection, group: str, topic: str) -> KafkaError | None:
    """Subscribe `group` to `topic`; the first error the consumer reports, or None once it
    gets a record (fails if neither comes within the deadline)."""
    consumer = Consumer(connection.config(**{"group.id": group, "auto.offset.reset": "earliest"}))
    try:
        consumer.subscribe([topic])

        def polled() -> KafkaError | bool:
            message = consumer.poll(0.5)
            if message is None:
                return False
            return message.error() or True

        result = eventually(polled, timeout=DEADLINE, interval=0, message=f"poll {topic}")
        return result if isinstance(result, KafkaError) else None
    finally:
        consumer.close()


def test_a_service_writes_the_topics_it_owns_and_dead_letters(
    secured: Secured, producers: list[EventProducer]
) -> None:
    order = secured.as_user("order")
    assert produce(producers, order, secured.topic("orders")) is None
    assert produce(producers, order, secured.topic("dead-letters")) is None


def test_a_service_writing_a_topic_it_does_not_own_is_refused(
    secured: Secured, producers: list[EventProducer]
) -> None:
    error = produce(producers, secured.as_user("order"), secured.topic("stock"))
    assert error is not None and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, error


def test_a_service_reads_what_it_subscribes_to_in_its_own_group(
    secured: Secured, producers: list[EventProducer]
) -> None:
    assert produce(producers, secured.as_user("product"), secured.topic("products")) is None
    order = secured.as_user("order")
    assert first_error(order, secured.topic("order"), secured.topic("products")) is None


@pytest.mark.parametrize("topic", ["dead-letters", "stock-changes"])
def test_a_service_reading_a_topic_it_does_not_subscribe_to_is_refused(
    secured: Secured, topic: str
) -> None:
    error = first_error(secured.as_user("order"), secured.topic("order"), secured.topic(topic))
    assert error is not None and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, error


def test_a_service_using_another_services_group_is_refused(secured: Secured) -> None:
    error = first_error(
        secured.as_user("order"), secured.topic("inventory"), secured.topic("products")
    )
    assert error is not None and error.code() == KafkaError.GROUP_AUTHORIZATION_FAILED, error


def test_the_observer_reads_dead_letters_but_writes_nothing(
    secured: Secured, producers: list[EventProducer]
) -> None:
    assert produce(producers, secured.as_user("user"), secured.topic("dead-letters")) is None
    observer = secured.as_user(OBSERVER)
    group = secured.topic(OBSERVER + "-" + unique())
    assert first_error(observer, group, secured.topic("dead-letters")) is None
    # Not idempotent: an idempotent producer that may write nowhere is refused its
    # producer id as a whole (CLUSTER_AUTHORIZATION_FAILED), before any topic is asked.
    error = produce(producers, observer, secured.topic("orders"), **{"enable.idempotence": False})
    assert error is not None and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, error


def test_the_redrive_principal_rereads_a_parked_record_and_puts_it_back(
    secured: Secured, producers: list[EventProducer]
) -> None:
    """Redrive by reference, under the ACL plan: inventory parks a record of `products`,
    and `redrive` reads it back from `products` and writes it there again."""
    product = EventProducer(secured.as_user("product"))
    producers.append(product)
    event = Envelope(
        type="product-created", source="/test", key="p-1", data=b'{"product_id": "p-1"}'
    )
    delivery = product.publish(secured.topic("products"), event)
    inventory = EventProducer(secured.as_user("inventory"))
    producers.append(inventory)
    parking = [
        (H_REASON, b"handler-failed"),
        (H_TOPIC, secured.topic("products").encode()),
        (H_PARTITION, str(delivery.partition).encode()),
        (H_OFFSET, str(delivery.offset).encode()),
        (H_CONSUMER, b"inventory"),
    ]
    inventory.produce_raw(
        secured.topic("dead-letters"), b"forged", b"p-1", [(H_ID, event.id.encode()), *parking]
    )
    redrive_as = EventProducer(secured.as_user(REDRIVE))
    producers.append(redrive_as)

    summary = redrive(
        secured.as_user(REDRIVE), redrive_as, topic_prefix=secured.prefix, consumer="inventory"
    )

    assert (summary.redriven, dict(summary.skipped)) == (1, {})
    records = read_topic(
        secured.as_user(ADMIN),
        secured.topic("products"),
        until=lambda got: len([m for m in got if m.key() == b"p-1"]) >= 2,
    )
    original, again = [m for m in records if m.key() == b"p-1"]
    assert again.value() == original.value() == event.data and again.value() != b"forged"
    assert again.headers() == original.headers()


def refused(config: dict[str, object]) -> list[KafkaError]:
    """Ask for metadata, which must fail within the deadline; return the errors the client
    reported meanwhile."""
    errors: list[KafkaError] = []
    admin = AdminClient({**config, "error_cb": errors.append})
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=10)
    admin.poll(0)  # serves the error callbacks
    return errors


def test_a_client_without_sasl_is_refused(secured: Secured) -> None:
    refused(KafkaConnection(secured.cluster.bootstrap).config())
    ca = str(secured.cluster.tls.ca)
    refused(KafkaConnection(secured.cluster.bootstrap, "SSL", ca_location=ca).config())


@pytest.mark.parametrize("user", ["order", "nobody"])
def test_a_wrong_password_is_refused(secured: Secured, user: str) -> None:
    wrong = secured.as_user(ADMIN).as_user(user, "not-the-password")
    errors = refused(wrong.config())
    assert any(error.code() == KafkaError._AUTHENTICATION for error in errors), errors


def test_the_stacks_topics_have_three_replicas_and_need_two_in_sync(secured: Secured) -> None:
    admin = AdminClient(secured.as_user(ADMIN).config())
    metadata = admin.list_topics(timeout=DEADLINE)
    topics = [secured.topic(name) for name in Topology.of_registry().topics]
    for name in topics:
        for partition in metadata.topics[name].partitions.values():
            assert len(partition.replicas) == 3, (name, partition.replicas)
    resource = ConfigResource(ResourceType.TOPIC, topics[0])
    configs = admin.describe_configs([resource])[resource].result(DEADLINE)
    assert configs["min.insync.replicas"].value == "2"
    assert configs["unclean.leader.election.enable"].value == "false"


def settings_of(admin: AdminClient, topic: str) -> dict[str, str]:
    resource = ConfigResource(ResourceType.TOPIC, topic)
    configs = admin.describe_configs([resource])[resource].result(DEADLINE)
    return {key: configs[key].value for key in ("cleanup.policy", "retention.ms", "segment.ms")}


def test_the_stacks_topics_carry_the_tables_cleanup_policy_and_retention(secured: Secured) -> None:
    admin = AdminClient(secured.as_user(ADMIN).config())
    for name, policy in TOPICS.items():
        wanted = {key: str(value) for key, value in policy.config().items()}
        assert settings_of(admin, secured.topic(name)) == wanted, name


def test_status_shows_each_topics_cleanup_policy_and_retention(secured: Secured) -> None:
    lines = describe_cluster(secured.as_user(ADMIN), secured.prefix).splitlines()
    for name, policy in TOPICS.items():
        kept = "forever" if policy.state else "7d"
        expected = (
            f"  {secured.topic(name)}  cleanup.policy {policy.cleanup_policy}, retention {kept}"
        )
        assert expected in lines, lines


def test_making_the_stack_again_sets_the_tables_settings_on_a_topic_made_before(
    secure_cluster: LocalCluster,
) -> None:
    """A cluster whose `products` was made when every topic was deleted after 7 days is
    brought to compaction by the next `make up` (or compose's kafka-init)."""
    prefix = unique("before") + "-"
    admin = secure_cluster.connection(ADMIN)
    old = {"cleanup.policy": "delete", "retention.ms": "604800000"}
    ensure_topics(admin, [prefix + "products"], configs={prefix + "products": old})
    client = AdminClient(admin.config())
    assert settings_of(client, prefix + "products")["cleanup.policy"] == "delete"
    passwords = {name: secure_cluster.password(name) for name in principals(Topology.of_registry())}
    secure_stack(admin, prefix, passwords)
    assert settings_of(client, prefix + "products")["cleanup.policy"] == "compact"
    assert settings_of(client, prefix + "products")["retention.ms"] == "-1"


def test_a_service_moves_its_own_stopped_group_and_not_anothers(
    secured: Secured,
    producers: list[EventProducer],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`tools.ops.offsets` signs in as the service whose group it moves on `make up`'s
    cluster: READ on its group and topics is all that takes."""
    topic, group = secured.topic("stock-changes"), secured.topic("product")
    for _ in range(3):
        assert produce(producers, secured.as_user("inventory"), topic) is None
    product = Consumer(secured.as_user("product").config(**{"group.id": group}))
    try:
        ends = [product.get_watermark_offsets(TopicPartition(topic, p), DEADLINE) for p in range(3)]
        product.commit(
            offsets=[TopicPartition(topic, p, high) for p, (_, high) in enumerate(ends)],
            asynchronous=False,
        )
    finally:
        product.close()
    move = [group, "--topic", "stock-changes", "--to-earliest", "--execute"]
    move += ["--topic-prefix", secured.prefix]
    for key, value in secured.cluster.client_env("inventory").items():
        monkeypatch.setenv(key, value)
    assert offsets.main(move) == 1
    assert "GROUP_AUTHORIZATION_FAILED" in capsys.readouterr().err
    for key, value in secured.cluster.client_env("product").items():
        monkeypatch.setenv(key, value)
    assert offsets.main(move) == 0
    assert f"moved group {group}: 3 partition(s) of 1 topic(s)" in capsys.readouterr().out
    reader = Consumer(secured.as_user("product").config(**{"group.id": group}))
    try:
        committed = reader.committed([TopicPartition(topic, p) for p in range(3)], DEADLINE)
        assert [tp.offset for tp in committed] == [low for low, _ in ends]
    finally:
        reader.close()


def test_a_service_reads_the_min_insync_of_the_topics_it_writes_and_no_others(
    secured: Secured,
) -> None:
    """What its /ready needs to tell degraded from down (shared.messaging.health)."""
    admin = AdminClient(secured.as_user("order").config())
    owned = ConfigResource(ResourceType.TOPIC, secured.topic("orders"))
    subscribed = ConfigResource(ResourceType.TOPIC, secured.topic("stock"))
    futures = admin.describe_configs([owned, subscribed], request_timeout=DEADLINE)
    assert futures[owned].result(DEADLINE)["min.insync.replicas"].value == "2"
    with pytest.raises(KafkaException) as refused:
        futures[subscribed].result(DEADLINE)
    assert refused.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_the_observer_sees_the_committed_offsets_of_any_group(
    secured: Secured,
) -> None:
    observer = Consumer(secured.as_user(OBSERVER).config(**{"group.id": secured.topic("order")}))
    try:
        partitions = [TopicPartition(secured.topic("products"), p) for p in range(3)]
        committed = observer.committed(partitions, timeout=DEADLINE)
        assert len(committed) == 3
    finally:
        observer.close()


def test_the_brokers_certificate_sets_up_a_stack_as_composes_kafka_init_does(
    secure_cluster: LocalCluster, tmp_path: Path, producers: list[EventProducer]
) -> None:
    """`python -m tools.local.kafka_security` signs in by mutual TLS on the inter-broker listener
    (the broker principal, a super user) and makes every credential, the admin's too."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for name in (ADMIN, *principals(Topology.of_registry())):
        (secrets / f"kafka_password_{name}").write_text(secure_cluster.password(name) + "\n")
    internal = ",".join(f"127.0.0.1:{n.internal_port}" for n in secure_cluster.nodes.values())
    tls = secure_cluster.tls
    prefix = unique("init") + "-"
    args = ["--bootstrap", internal, "--ca", str(tls.ca), "--client-pem", str(tls.broker)]
    assert kafka_security.main([*args, "--secrets", str(secrets), "--prefix", prefix]) == 0
    assert produce(producers, secure_cluster.connection("order"), prefix + "orders") is None
    error = produce(producers, secure_cluster.connection("order"), prefix + "stock")
    assert error is not None and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, error
