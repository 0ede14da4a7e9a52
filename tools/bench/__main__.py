"""Command line: `python -m tools.bench [run|consumer|limits] [options]` (see __init__)."""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tools.bench import consumer_bench, limits, load, procs, profile
from tools.bench.plot import plot_run
from tools.bench.report import ratio, render, write_json
from tools.bench.wrk import WrkMissing, require_wrk
from tools.client import DEFAULT_URLS, ShopClient
from tools.kafka_local import LocalBroker

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


def command_run(args: argparse.Namespace) -> int:
    try:
        require_wrk()
        pids = procs.require_stack()
    except (WrkMissing, procs.StackNotUp) as exc:
        say(f"bench: {exc}")
        return 2
    stamp = time.strftime("%Y%m%d-%H%M%S")
    result: dict[str, Any] = {"kind": "bench", "environment": environment(), "args": vars(args)}
    shop = ShopClient()
    try:
        say(
            f"catalogue: {args.products} products with stock {args.ample_stock}, "
            f"{args.scarce} scarce with stock {args.scarce_stock}"
        )
        catalogue = load.setup_catalogue(
            shop,
            products=args.products,
            scarce=args.scarce,
            ample_stock=args.ample_stock,
            scarce_stock=args.scarce_stock,
            say=say,
        )
    finally:
        shop.close()
    sampler = procs.Sampler(pids).start()
    recordings: list[profile.Recording] = []
    profile_for = int(min(args.profile_duration, args.duration - args.warmup))

    def on_load_tick(elapsed: float) -> None:
        if args.profile and not recordings and elapsed >= args.warmup and profile_for > 0:
            say(f"  py-spy: recording order and inventory for {profile_for}s")
            recordings.extend(
                profile.start(pids, ["order", "inventory"], profile_for, RESULTS, stamp)
            )

    try:
        say(
            f"load: wrk -t{args.threads} -c{args.connections} -d{args.duration:.0f}s POST /orders"
            + (f", paced to <= {args.rate}/s" if args.rate else "")
        )
        e2e, series = load.run_e2e(
            bootstrap=args.bootstrap,
            order_url=DEFAULT_URLS["order"],
            catalogue=catalogue,
            sampler=sampler,
            duration=args.duration,
            connections=args.connections,
            threads=args.threads,
            rate_limit=args.rate,
            scarce_share=args.scarce_share,
            warmup=args.warmup,
            drain_timeout=args.drain,
            say=say,
            on_load_tick=on_load_tick,
        )
        result["e2e"] = e2e
        if recordings:
            result["profiles"] = profile.finish(recordings, ROOT)
        if not args.no_limits:
            result["limits"] = run_limits(args, sampler)
            result["ratios"] = ratios(e2e, result["limits"])
    finally:
        sampler.stop()
    json_path = RESULTS / f"bench-{stamp}.json"
    png_path = RESULTS / f"bench-{stamp}.png"
    result["series"] = {"orders": series["orders"], "load_start": series["load_start"]}
    write_json(result, json_path)
    plot_run(e2e, series, png_path)
    say("")
    say(render(result))
    say(f"\nwrote {json_path.relative_to(ROOT)} and {png_path.relative_to(ROOT)}")
    if len(e2e["outcomes"]) < 2:
        say("note: only one kind of outcome occurred; raise --scarce-share or lower stock")
    return 0


def command_limits(args: argparse.Namespace) -> int:
    try:
        require_wrk()
    except WrkMissing as exc:
        say(f"bench: {exc}")
        return 2
    stamp = time.strftime("%Y%m%d-%H%M%S")
    pids = {k: v for k, v in procs.pid_files().items() if k == "kafka"}
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
    main = argparse.ArgumentParser(
        prog="python -m tools.bench",
        description=sys.modules["tools.bench"].__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    main.add_argument(
        "command", nargs="?", default="run", choices=["run", "consumer", "limits"],
        help="run (default): end to end and the ceilings; consumer: the consumer "
        "microbenchmark; limits: the ceilings alone",
    )  # fmt: skip
    main.add_argument("--bootstrap", default=LocalBroker().bootstrap, help="Kafka (%(default)s)")
    load_opts = main.add_argument_group("load")
    load_opts.add_argument("--duration", type=float, default=30, help="seconds of load (30)")
    load_opts.add_argument("--connections", type=int, default=16, help="wrk connections (16)")
    load_opts.add_argument("--threads", type=int, default=1, help="wrk threads (1)")
    load_opts.add_argument(
        "--rate", type=float, default=None,
        help="cap the request rate (wrk pacing per connection; default: as fast as it goes)",
    )  # fmt: skip
    load_opts.add_argument("--warmup", type=float, default=5, help="s left out of stats (5)")
    load_opts.add_argument("--drain", type=float, default=120, help="max s to await outcomes")
    catalogue = main.add_argument_group("catalogue")
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
    prof.add_argument("--profile", action="store_true", help="py-spy order and inventory")
    prof.add_argument("--profile-duration", type=float, default=20)
    cons = main.add_argument_group("consumer")
    cons.add_argument("--events", type=int, default=20_000, help="events per phase (20000)")
    return main


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    commands = {"run": command_run, "consumer": command_consumer, "limits": command_limits}
    return commands[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
