"""Command line: `python -m tools.bench [run|consumer|relay|limits] [options]` (see
__init__)."""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from shared.runtime.settings import KafkaSettings
from tools.bench import (
    consumer_bench,
    limits,
    load,
    pg_stack,
    procs,
    profile,
    relay_bench,
    single_stack,
)
from tools.bench.pg_stack import Target
from tools.bench.plot import plot_run
from tools.bench.report import (
    SERVICES,
    cpu_headline,
    evaluate_targets,
    ratio,
    render,
    write_json,
)
from tools.bench.wrk import WrkMissing, require_wrk
from tools.local.certs import ADMIN
from tools.local.cluster import sign_in_locally
from tools.ops.client import ShopClient

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "results"


def say(text: str) -> None:
    print(text, flush=True)


def environment() -> dict[str, Any]:
    def installed(module: str) -> bool:
        try:
            __import__(module)
        except ImportError:
            return False
        return True

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return {
        "commit": commit or None,
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
        "uvloop": installed("uvloop"),
        "httptools": installed("httptools"),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def run_limits(args: argparse.Namespace, sampler: procs.Sampler) -> dict[str, Any]:
    say(f"HTTP ceiling: bare FastAPI on uvicorn, {args.limit_duration:.0f}s per endpoint")
    http = limits.http_ceiling(
        duration=args.limit_duration,
        connections=args.connections,
        threads=args.threads,
        sampler=sampler,
        say=say,
    )
    say(f"broker ceiling: {args.raw_messages} messages produced and consumed back")
    kafka = limits.kafka_ceiling(args.bootstrap, messages=args.raw_messages, say=say)
    say(f"  {kafka['roundtrip_per_s']:.0f} msg/s")
    return {"http": http, "kafka": kafka}


def ratios(e2e: dict[str, Any] | None, ceilings: dict[str, Any] | None) -> dict[str, Any]:
    if not e2e or not ceilings:
        return {}
    bare = ceilings["http"].get("bare async def", {}).get("requests_per_s")
    pool = ceilings["http"].get("bare def (threadpool)", {}).get("requests_per_s")
    broker = ceilings["kafka"]["roundtrip_per_s"]
    return {
        "accepted req/s / bare async endpoint req/s": ratio(e2e["accepted_per_s"], bare),
        "accepted req/s / bare threadpool endpoint req/s": ratio(e2e["accepted_per_s"], pool),
        "completed orders/s / bare async endpoint req/s": ratio(e2e["completed_per_s"], bare),
        "kafka records/s (all topics) / broker ceiling": ratio(e2e["kafka_records_per_s"], broker),
    }


def attempt(result: dict[str, Any], key: str, step: Callable[[], Any]) -> Any:
    """Run one part of the bench into result[key]; a failure is reported in
    result[key + "_error"] and the run goes on (its targets read as not measured)."""
    try:
        result[key] = step()
    except Exception as exc:
        say(f"bench: {key} failed: {exc!r}")
        result[f"{key}_error"] = repr(exc)
        return None
    return result[key]


def command_run(args: argparse.Namespace) -> int:
    try:
        require_wrk()
        if args.backend == "sqlite":
            pids = procs.require_stack()
            # `make up` with KAFKA_NODES=1 is held to the single node's targets
            stack = "single" if len(procs.brokers(pids)) == 1 else "default"
            target = Target("sqlite", pids=pids, stack=stack)
    except (WrkMissing, procs.StackNotUp) as exc:
        say(f"bench: {exc}")
        return 2
    if args.backend == "sqlite":
        return run_suite(args, target)
    if args.backend == "single":
        with single_stack.single_stack(say=say) as target:
            args.bootstrap = target.bootstrap
            return run_suite(args, target)
    with pg_stack.postgres_stack(
        args.bootstrap,
        workers=args.pg_workers,
        server_url=args.database_url,
        kafka_pids=procs.brokers(procs.pid_files()),
        say=say,
    ) as target:
        return run_suite(args, target)


def run_suite(args: argparse.Namespace, target: Target) -> int:
    """The default run: unpaced load, the paced run at half its completed rate, the consumer
    and relay benchmarks, the ceilings; then the headline and the targets."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    result: dict[str, Any] = {}
    shop = ShopClient(target.urls)
    catalogue = make_catalogue(args, target, shop)
    sampler = procs.Sampler(target.pids).start()
    e2e = EndToEnd(args, target, shop, catalogue, sampler, stamp)
    try:
        warm_up(args, target, e2e, result)
        main_run = attempt(result, "e2e", e2e.step("e2e", args.duration, args.rate))
        if e2e.recordings:
            result["profiles"] = profile.finish(e2e.recordings, ROOT)
        if not args.no_paced:
            half = (main_run or {}).get("completed_per_s") or 0.0
            rate = args.paced_rate or half / 2
            if rate >= 1:
                duration = args.paced_duration or args.duration
                attempt(result, "paced", e2e.step("paced", duration, rate))
            else:
                result["paced_error"] = "the unpaced run completed no orders to pace against"
        run_the_others(args, target, sampler, result)
    finally:
        sampler.stop()
        shop.close()
    return finish(args, result, target, e2e.series, stamp)


JIT_QUIET = 0.05
"""The brokers are warm once their JIT compilers take at most this share of their CPU."""
WARM_STEP = 15.0


def warm_up(
    args: argparse.Namespace, target: Target, e2e: EndToEnd, result: dict[str, Any]
) -> None:
    """Load left out of everything before the measured runs: `--warm-run` seconds, then
    WARM_STEP more at a time while the brokers' JIT compilers still take over JIT_QUIET of
    their CPU (a fresh cluster's do for minutes), `--warm-max` seconds in all at most."""
    brokers = list(procs.brokers(target.pids).values())
    spent, step = 0.0, args.warm_run
    while step > 0:
        say(f"warming the stack: {step:.0f}s of load, not measured")
        before = procs.jit_ticks(brokers)
        attempt(result, "warm", e2e.step("warm", step, args.rate))
        e2e.series.pop("warm", None)
        result.pop("warm", None)
        spent += step
        share = procs.jit_share(before, procs.jit_ticks(brokers))
        if brokers:
            say(f"  the brokers' JIT compilers took {share:.0%} of their CPU")
        step = next_warm_step(share, spent, args.warm_max)


def next_warm_step(jit_share: float, spent: float, limit: float) -> float:
    """Seconds of warm load still to run: none once the compilers are quiet or `limit`
    seconds were spent."""
    if jit_share <= JIT_QUIET or spent >= limit:
        return 0.0
    return min(WARM_STEP, limit - spent)


def make_catalogue(args: argparse.Namespace, target: Target, shop: ShopClient) -> load.Catalogue:
    say(
        f"catalogue: {args.users} users, {args.products} products with stock"
        f" {args.ample_stock}, {args.scarce} scarce with stock {args.scarce_stock}"
    )
    return load.setup_catalogue(
        shop,
        shop.as_operator(password_file=target.operator_password_file),
        users=args.users,
        products=args.products,
        scarce=args.scarce,
        ample_stock=args.ample_stock,
        scarce_stock=args.scarce_stock,
        say=say,
    )


class EndToEnd:
    """The end-to-end runs of one suite: each `step` drives the load once; the first also
    profiles the services with py-spy once warm (`--profile`)."""

    def __init__(
        self,
        args: argparse.Namespace,
        target: Target,
        shop: ShopClient,
        catalogue: load.Catalogue,
        sampler: procs.Sampler,
        stamp: str,
    ) -> None:
        self.args, self.target, self.shop, self.catalogue = args, target, shop, catalogue
        self.sampler, self.stamp = sampler, stamp
        self.recordings: list[profile.Recording] = []
        self.series: dict[str, Any] = {}
        """Each run's raw per-order series, by its key."""
        self.profile_for = int(min(args.profile_duration, args.duration - args.warmup))

    def on_load_tick(self, elapsed: float) -> None:
        args = self.args
        warm = elapsed >= args.warmup and self.profile_for > 0
        if args.profile and not self.recordings and warm:
            services = args.profile_services
            say(f"  py-spy: recording {', '.join(services)} for {self.profile_for}s")
            self.recordings.extend(
                profile.start(self.target.pids, services, self.profile_for, RESULTS, self.stamp)
            )

    def step(self, key: str, duration: float, rate: float | None) -> Callable[[], dict[str, Any]]:
        args = self.args

        def run() -> dict[str, Any]:
            say(
                f"load: wrk -t{args.threads} -c{args.connections} -d{duration:.0f}s POST /orders"
                + (f", paced to <= {rate:.0f}/s" if rate else ", unpaced")
            )
            summary, self.series[key] = load.run_e2e(
                bootstrap=args.bootstrap,
                shop=self.shop,
                catalogue=self.catalogue,
                sampler=self.sampler,
                load=load.Load(
                    duration=duration,
                    connections=args.connections,
                    threads=args.threads,
                    rate_limit=rate,
                    scarce_share=args.scarce_share,
                    warmup=args.warmup,
                    drain_timeout=args.drain,
                ),
                say=say,
                on_load_tick=self.on_load_tick if key == "e2e" else None,
                topic_prefix=self.target.topic_prefix,
            )
            return summary

        return run


def run_the_others(
    args: argparse.Namespace, target: Target, sampler: procs.Sampler, result: dict[str, Any]
) -> None:
    """The consumer and relay benchmarks and the ceilings, unless told to skip them."""
    if not args.no_consumer:
        say(f"consumer benchmark: {args.events} events per kind")
        attempt(
            result, "consumer", lambda: consumer_bench.run(args.bootstrap, args.events, say=say)
        )
    if not args.no_relay:
        relay_url = args.database_url or (
            pg_stack.local_server_url() if target.backend == "postgresql" else None
        )
        attempt(
            result,
            "relay",
            lambda: relay_bench.run(args.bootstrap, args.rows, relay_url, args.batch_size, say=say),
        )
    if not args.no_limits:
        attempt(result, "limits", lambda: run_limits(args, sampler))
        result["ratios"] = ratios(result.get("e2e"), result.get("limits"))


def finish(
    args: argparse.Namespace,
    result: dict[str, Any],
    target: Target,
    series: dict[str, Any],
    stamp: str,
) -> int:
    report = {
        "kind": "bench",
        "backend": target.backend,
        "stack": target.stack,
        "settings": procs.settings(target.pids),
        "workers": target.workers,
        "cpu_ms_per_order": cpu_headline(result.get("e2e")),
        "targets": evaluate_targets(result, target.stack),
        "environment": environment(),
        "args": vars(args),
        **result,
        "series": {
            key: {"orders": run["orders"], "load_start": run["load_start"]}
            for key, run in series.items()
        },
    }
    json_path = RESULTS / f"bench-{stamp}.json"
    write_json(report, json_path)
    written = [json_path]
    for key, suffix in (("e2e", ""), ("paced", "-paced")):
        if result.get(key) and key in series:
            png_path = RESULTS / f"bench-{stamp}{suffix}.png"
            plot_run(result[key], series[key], png_path)
            written.append(png_path)
    say("")
    say(render(report))
    say("\nwrote " + ", ".join(str(p.relative_to(ROOT)) for p in written))
    if result.get("e2e") and len(result["e2e"]["outcomes"]) < 2:
        say("note: only one kind of outcome occurred; raise --scarce-share or lower stock")
    return 0 if result.get("e2e") else 1


def command_limits(args: argparse.Namespace) -> int:
    try:
        require_wrk()
    except WrkMissing as exc:
        say(f"bench: {exc}")
        return 2
    stamp = time.strftime("%Y%m%d-%H%M%S")
    pids = procs.brokers(procs.pid_files())
    sampler = procs.Sampler(pids).start()
    try:
        result = {
            "kind": "limits",
            "environment": environment(),
            "limits": run_limits(args, sampler),
        }
    finally:
        sampler.stop()
    path = RESULTS / f"limits-{stamp}.json"
    write_json(result, path)
    say(render(result))
    say(f"\nwrote {path.relative_to(ROOT)}")
    return 0


def command_relay(args: argparse.Namespace) -> int:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    relay = relay_bench.run(args.bootstrap, args.rows, args.database_url, args.batch_size, say=say)
    result = {"kind": "relay", "environment": environment(), "relay": relay}
    result["targets"] = [t for t in evaluate_targets(result) if t["name"].startswith("outbox")]
    path = RESULTS / f"relay-{stamp}.json"
    write_json(result, path)
    say("")
    say(render(result))
    say(f"\nwrote {path.relative_to(ROOT)}")
    return 0 if relay["verified"] else 1


def command_consumer(args: argparse.Namespace) -> int:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    result = {
        "kind": "consumer",
        "environment": environment(),
        "consumer": consumer_bench.run(args.bootstrap, events=args.events, say=say),
    }
    path = RESULTS / f"consumer-{stamp}.json"
    write_json(result, path)
    say("")
    say(render(result))
    say(f"\nwrote {path.relative_to(ROOT)}")
    return 0


def parser() -> argparse.ArgumentParser:
    """Every option of every command, in groups. It is long because it is a list, one
    add_argument per option: split, it would only scatter the options."""
    main = argparse.ArgumentParser(
        prog="python -m tools.bench",
        description=sys.modules["tools.bench"].__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    main.add_argument(
        "command", nargs="?", default="run", choices=["run", "consumer", "relay", "limits"],
        help="run (default): end to end unpaced and at half rate, the consumer and relay "
        "benchmarks, the ceilings, the targets; consumer: the consumer microbenchmark; "
        "relay: the outbox relay benchmark; limits: the ceilings alone",
    )  # fmt: skip
    main.add_argument(
        "--bootstrap",
        help="Kafka's address (default: KAFKA_BOOTSTRAP_SERVERS, else the cluster `make up` "
        "runs here, signed in as its admin, else 127.0.0.1:9092)",
    )
    main.add_argument(
        "--backend", choices=["sqlite", "single", "postgres"], default="sqlite",
        help="sqlite (default): the stack `make up` started; single: a stack of its own on "
        "one plaintext broker with no span export, ports 8201-8204; postgres: a stack of its "
        "own on fresh PostgreSQL databases, ports 8101-8104; both stopped afterwards",
    )  # fmt: skip
    main.add_argument(
        "--database-url",
        help="PostgreSQL server (a superuser URL; the bench creates and drops its databases) "
        "for --backend postgres and the relay benchmark (default: tools/local/postgres.sh's; "
        "the relay benchmark alone defaults to SQLite)",
    )
    main.add_argument(
        "--pg-workers", type=int, default=2, help="uvicorn workers per service on postgres (2)"
    )
    load_opts = main.add_argument_group("load")
    load_opts.add_argument("--duration", type=float, default=30, help="seconds of load (30)")
    load_opts.add_argument("--connections", type=int, default=16, help="wrk connections (16)")
    load_opts.add_argument("--threads", type=int, default=1, help="wrk threads (1)")
    load_opts.add_argument(
        "--rate", type=float, default=None,
        help="cap the request rate (wrk pacing per connection; default: as fast as it goes)",
    )  # fmt: skip
    load_opts.add_argument("--warmup", type=float, default=5, help="s left out of stats (5)")
    load_opts.add_argument(
        "--warm-run", type=float, default=30,
        help="s of load before the measured runs, left out of everything (30): a just-started "
        "broker's JIT compiler otherwise takes a large share of its CPU per order; more in "
        "steps of 15 while the brokers' compilers take over 5%% of their CPU; 0 skips it",
    )  # fmt: skip
    load_opts.add_argument(
        "--warm-max", type=float, default=180, help="s of warm load at most (180)"
    )
    load_opts.add_argument("--drain", type=float, default=120, help="max s to await outcomes")
    load_opts.add_argument("--no-paced", action="store_true", help="skip the half-rate run")
    load_opts.add_argument(
        "--paced-rate", type=float, help="rate of the paced run (half the completed rate)"
    )
    load_opts.add_argument(
        "--paced-duration", type=float, help="seconds of the paced run (--duration)"
    )
    catalogue = main.add_argument_group("catalogue")
    catalogue.add_argument(
        "--users", type=int, default=32,
        help="customers the orders are spread over, each with its own token (32): the order "
        "service limits each user to 50 orders/s, in bursts of 100",
    )  # fmt: skip
    catalogue.add_argument("--products", type=int, default=50, help="ample products (50)")
    catalogue.add_argument("--ample-stock", type=int, default=10_000_000)
    catalogue.add_argument("--scarce", type=int, default=3, help="scarce products (3)")
    catalogue.add_argument("--scarce-stock", type=int, default=20, help="their stock (20)")
    catalogue.add_argument(
        "--scarce-share", type=float, default=0.1, help="share of orders for them (0.1)"
    )
    ceilings = main.add_argument_group("ceilings")
    ceilings.add_argument("--no-limits", action="store_true", help="skip the ceilings")
    ceilings.add_argument("--limit-duration", type=float, default=10, help="s per HTTP ceiling")
    ceilings.add_argument("--raw-messages", type=int, default=200_000)
    prof = main.add_argument_group("profile")
    prof.add_argument("--profile", action="store_true", help="py-spy the services under load")
    prof.add_argument(
        "--profile-services",
        type=lambda text: [name for name in text.split(",") if name],
        default=list(SERVICES),
        help="which services --profile records (comma-separated; all four)",
    )
    prof.add_argument("--profile-duration", type=float, default=20)
    cons = main.add_argument_group("consumer")
    cons.add_argument("--no-consumer", action="store_true", help="skip it in a run")
    cons.add_argument("--events", type=int, default=5_000, help="events per kind (5000)")
    relay = main.add_argument_group("relay")
    relay.add_argument("--no-relay", action="store_true", help="skip it in a run")
    relay.add_argument("--rows", type=int, default=100_000, help="outbox rows (100000)")
    relay.add_argument("--batch-size", type=int, help="OutboxRelay batch_size (its default)")
    return main


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    sign_in_locally(ADMIN)  # it makes and deletes topics of its own
    kafka = KafkaSettings().kafka()
    args.bootstrap = replace(kafka, bootstrap=args.bootstrap) if args.bootstrap else kafka
    commands = {
        "run": command_run,
        "consumer": command_consumer,
        "relay": command_relay,
        "limits": command_limits,
    }
    return commands[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
