"""End-to-end throughput and latency of the order saga, beside the limits of its parts.

    make up && make bench                       # = python -m tools.bench
    python -m tools.bench --duration 60 --connections 32
    python -m tools.bench --backend postgres    # a stack of its own on PostgreSQL
    python -m tools.bench --rate 100            # the first run paced too
    python -m tools.bench --profile             # py-spy the four services under load
    python -m tools.bench limits                # the two ceilings alone
    python -m tools.bench consumer              # one consumer's events/s against raw
    python -m tools.bench relay                 # outbox relay drain against raw produce

`run` (the default) needs the stack that `make up` started (or, with --backend postgres,
starts one of its own: see pg_stack). It registers --users customers (32) and, signed in
as the operator, ample products and a few scarce ones through the REST API, drives POST
/orders with wrk for --duration seconds (each request with the next customer's token, so
no user's rate limit is the bottleneck), and reads
every order's outcome (order-confirmed / order-rejected) back from the `orders` topic with
a consumer of its own (with inventory's answer on `stock`, which splits the latency into
three stages: order relay, inventory, order consumer; the definitions are in load.py);
meanwhile it samples CPU and RSS of each service's process tree, the broker, wrk and itself
every 0.5 s and prints a line a second. Then the same load paced to half the completed
rate, the consumer and relay benchmarks, and the ceilings: wrk against a bare FastAPI
endpoint on uvicorn (HTTP) and a raw confluent-kafka produce-and-consume loop (broker).

The summary opens with CPU ms per completed order (the services' sum, the broker's, each
process's) and the targets, each met, not met or not measured; the JSON carries both at its
top level (`cpu_ms_per_order`, `targets`). Results go to results/bench-<timestamp>.json and
.png (latency over time, throughput per second, latency histogram; -paced.png for the
second run); with --profile also results/<service>-<timestamp>.speedscope.json (CPU
profile, speedscope.app) and .folded (py-spy raw, idle threads too), and the top CPU
self-time frames per service in ms per order. Load is bounded: wrk stops after --duration,
the drain after --drain seconds, the broker ceiling after --raw-messages."""
