"""Put a consumer's dead-lettered events back on their original topics.

Run it once the cause that parked them is fixed:

    python -m tools.ops.redrive --topic-prefix P (--consumer NAME | --all) [--bootstrap HOST:PORT]

Redrive goes by reference (shared/messaging/redrive.py): each dead letter names the
record it parked, which is re-read from its topic and re-published exactly as its
publisher wrote it. A dead letter that references no record it may redrive (a notice, a
malformed or foreign reference, a record no longer retained, another event at that
offset) is skipped and counted by reason, never published.

On a secured cluster it signs in as the settings say; give it the `redrive` principal,
the one that may read dead letters and the topics they came from and put records back:
`eval "$(python -m tools.local.cluster env redrive)"` sets those variables for `make up`'s.

Redrives what is parked when it starts and commits its progress, so running it again
re-publishes only what was parked since. Consumers drop a redriven event that was already
applied (the processed-events table), so a repeat is harmless."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from confluent_kafka import KafkaException

from shared.messaging.deadletter import DEAD_LETTERS
from shared.messaging.producer import DeliveryError, EventProducer
from shared.messaging.redrive import redrive
from shared.runtime.settings import KafkaSettings
from tools.local.certs import REDRIVE
from tools.local.cluster import sign_in_locally


def main(argv: list[str] | None = None) -> int:
    sign_in_locally(REDRIVE)
    settings = KafkaSettings()
    parser = argparse.ArgumentParser(
        prog="python -m tools.ops.redrive", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--topic-prefix",
        default=settings.topic_prefix,
        help="the stack's topic prefix (default: %(default)r, from TOPIC_PREFIX)",
    )
    chosen = parser.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--consumer", help="the consumer whose dead letters to redrive")
    chosen.add_argument("--all", action="store_true", help="every consumer's dead letters")
    parser.add_argument(
        "--bootstrap",
        default=settings.kafka_bootstrap_servers,
        help="Kafka bootstrap servers (default: %(default)s, from KAFKA_BOOTSTRAP_SERVERS)",
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds before giving up (default: 60)"
    )
    args = parser.parse_args(argv)
    topic = args.topic_prefix + DEAD_LETTERS
    kafka = dataclasses.replace(settings.kafka(), bootstrap=args.bootstrap)
    producer = EventProducer(kafka)
    whose = args.consumer or "every consumer"
    try:
        summary = redrive(
            kafka,
            producer,
            topic_prefix=args.topic_prefix,
            consumer=args.consumer,
            timeout=args.timeout,
        )
    except (LookupError, TimeoutError, DeliveryError, KafkaException) as exc:
        print(f"redrive failed: {exc}", file=sys.stderr)
        return 1
    finally:
        producer.close()
    print(f"re-published {summary.redriven} dead-lettered event(s) of {whose} from {topic}")
    for reason, count in sorted(summary.skipped.items()):
        print(f"skipped {count}: {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
