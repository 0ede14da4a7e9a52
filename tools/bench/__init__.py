"""End-to-end throughput and latency of the order saga, beside the limits of its parts.

    make up && make bench                       # = python -m tools.bench
    python -m tools.bench --duration 60 --connections 32
    python -m tools.bench --rate 100            # latency at a capped request rate
    python -m tools.bench --profile             # py-spy order and inventory under load
    python -m tools.bench limits                # the two ceilings alone
    python -m tools.bench consumer              # one consumer's events/s against raw

`run` (the default) needs the stack that `make up` started. It creates one user, ample
products and a few scarce ones through the REST API, drives POST /orders with wrk for
--duration seconds, and reads every order's outcome (order-confirmed / order-rejected)
back from the `orders` topic with a consumer of its own (with inventory's answer on `stock`,
which splits the latency into three stages: order relay, inventory, order consumer; the
definitions are in load.py); meanwhile it samples CPU and RSS
of each service, the broker, wrk and itself every 0.5 s and prints a line a second. Then
it measures the ceilings: wrk against a bare FastAPI endpoint on uvicorn (HTTP) and a raw
confluent-kafka produce-and-consume loop (broker), and reports ours as ratios to them.

Results go to results/bench-<timestamp>.json and .png (latency over time, throughput
per second, latency histogram); with --profile also results/<service>-<timestamp>.svg
(flame graph) and .folded (py-spy raw). Load is bounded: wrk stops after --duration, the
drain after --drain seconds, the broker ceiling after --raw-messages."""
