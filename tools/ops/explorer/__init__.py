"""The event explorer: a read-only page that watches the shop's Kafka topics live.

    python -m tools.ops.explorer [--port 8090] [--bootstrap HOST:PORT] [--topic-prefix P]

See docs/explorer.md."""
