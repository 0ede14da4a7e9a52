"""The bench's arithmetic: percentiles, windows, rates, wrk's summary, profile folding,
the CPU headline and the targets."""

from __future__ import annotations

import json
import math

import pytest

from tools.bench.report import (
    IDLE,
    MET,
    NOT_MEASURED,
    NOT_MET,
    PHASE_RAW_DECODE,
    PHASE_WORKER_ORDERS,
    STACK_TARGETS,
    WRK_MARKER,
    category,
    cpu_headline,
    cpu_seconds,
    cpu_self_summary,
    cpu_summary,
    describe_stack,
    evaluate_targets,
    parse_folded,
    parse_wrk,
    per_second,
    percentile,
    profile_summary,
    rate,
    ratio,
    render,
    render_headline,
    role_of,
    steady_window,
    summarize,
    target,
)
from tools.bench.wrk import OrderMix, lua_data, lua_string, pacing_interval_ms

pytestmark = pytest.mark.unit


def test_percentile_interpolates_between_closest_ranks() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([4, 1, 3, 2], 0) == 1
    assert percentile([4, 1, 3, 2], 100) == 4
    assert percentile(list(range(101)), 95) == 95
    assert percentile([10, 20], 99) == pytest.approx(19.9)


def test_percentile_of_one_value_is_that_value() -> None:
    assert percentile([7.5], 50) == 7.5
    assert percentile([7.5], 99) == 7.5


def test_percentile_refuses_no_values_and_out_of_range_quantiles() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1], 101)


def test_summary_reports_count_mean_quantiles_and_extremes() -> None:
    summary = summarize([float(v) for v in range(1, 101)])
    assert summary["count"] == 100
    assert summary["mean"] == 50.5
    assert summary["min"] == 1
    assert summary["max"] == 100
    assert summary["p50"] == pytest.approx(50.5)
    assert summary["p95"] == pytest.approx(95.05)
    assert summary["p99"] == pytest.approx(99.01)


def test_summary_of_nothing_is_all_none_and_zero_count() -> None:
    summary = summarize([])
    assert summary["count"] == 0
    assert all(summary[k] is None for k in ("mean", "min", "p50", "p95", "p99", "max"))


def test_rate_counts_a_half_open_window() -> None:
    times = [10.0, 10.5, 11.0, 11.999, 12.0]
    assert rate(times, 10.0, 12.0) == 2.0  # 12.0 itself is outside
    with pytest.raises(ValueError):
        rate(times, 12.0, 12.0)


def test_per_second_buckets_by_whole_seconds_and_drops_the_rest() -> None:
    assert per_second([100.0, 100.9, 101.0, 102.5, 99.0, 103.0], 100.0, 3) == [2, 1, 1]
    assert per_second([1.0], 0.0, 0) == []


def test_ratio_is_none_without_a_denominator() -> None:
    assert ratio(50, 200) == 0.25
    assert ratio(50, 0) is None
    assert ratio(None, 3) is None
    assert ratio(1, None) is None


def test_steady_window_skips_warmup_unless_it_would_leave_nothing() -> None:
    assert steady_window(100.0, 130.0, 5) == (105.0, 130.0)
    assert steady_window(100.0, 103.0, 5) == (100.0, 103.0)


def wrk_output(statuses: dict[str, int], duration_us: int = 2_000_000) -> str:
    summary = {
        "requests": sum(statuses.values()),
        "duration_us": duration_us,
        "bytes": 1000,
        "errors": {"connect": 0, "read": 1, "write": 0, "status": 3, "timeout": 2},
        "statuses": statuses,
        "latency_us": {"p50": 1500, "p99": 9000, "min": 100, "max": 12000, "mean": 2.0},
    }
    return f"Running 2s test\n  noise\n{WRK_MARKER}{json.dumps(summary)}\n"


def test_parse_wrk_derives_rates_and_counts_non_202_and_socket_errors() -> None:
    result = parse_wrk(wrk_output({"202": 400, "422": 3}))
    assert result["seconds"] == 2.0
    assert result["requests_per_s"] == pytest.approx(201.5)
    assert result["accepted_per_s"] == 200.0
    assert result["non_202"] == 3
    assert result["socket_errors"] == 3
    assert result["latency_us"]["p99"] == 9000


def test_parse_wrk_without_the_summary_line_says_so() -> None:
    with pytest.raises(ValueError, match="no summary"):
        parse_wrk("Running 2s test\n")


def test_cpu_summary_averages_inside_the_window_and_peaks_rss_over_all() -> None:
    samples = [
        (0.0, "order", 50.0, 100 * 2**20),
        (1.0, "order", 80.0, 120 * 2**20),
        (2.0, "order", 100.0, 110 * 2**20),
        (5.0, "order", 10.0, 300 * 2**20),  # after the window: RSS counts, CPU does not
        (1.0, "kafka", 20.0, 2**30),
    ]
    summary = cpu_summary(samples, 1.0, 3.0)
    assert summary["order"]["cpu_mean"] == 90.0
    assert summary["order"]["cpu_max"] == 100.0
    assert summary["order"]["rss_peak_mib"] == 300.0
    assert summary["kafka"]["rss_peak_mib"] == 1024.0


CONSUMER = "thread (11): consumer-order"
WORKER = "thread (12): AnyIO worker thread"
BEGIN = (
    "Connection._begin_impl (sqlalchemy/engine/base.py:1158)",
    "DefaultDialect.do_execute (sqlalchemy/engine/default.py:1192)",
)
FOLDED = [
    f"{CONSUMER};ConsumerWorker._run (shared/consumer.py:165);"
    "claim (shared/idempotency.py:41);"
    "DefaultDialect.do_execute (sqlalchemy/engine/default.py:1192) 6\n",
    f"{CONSUMER};ConsumerWorker._run (shared/consumer.py:165);"
    "UnitOfWork.__call__ (shared/unit_of_work.py:70);"
    "DefaultDialect.do_commit (sqlalchemy/engine/default.py:954) 2\n",
    f"{CONSUMER};ConsumerWorker._run (shared/consumer.py:162) 2\n",
    f"{WORKER};place_order (services/order/api.py:32);{';'.join(BEGIN)} 7\n",
    f"{WORKER};WorkerThread.run (anyio/_backends/_asyncio.py:1113);"
    "Queue.get (queue.py:171);Condition.wait (threading.py:327) 3\n",
    "\n",
    "garbage-without-count\n",
]


def test_parse_folded_reads_frames_root_first_and_skips_junk() -> None:
    stacks = parse_folded(FOLDED)
    assert len(stacks) == 5
    frames, count = stacks[0]
    assert frames[0] == CONSUMER
    assert frames[-1].startswith("DefaultDialect.do_execute")
    assert count == 6


def test_roles_come_from_thread_names() -> None:
    assert role_of([CONSUMER]) == "consumer"
    assert role_of([WORKER]) == "HTTP handlers (threadpool)"
    assert role_of(["thread (1): MainThread"]) == "event loop"
    assert role_of(["thread (2): outbox-relay"]) == "outbox relay"
    assert role_of(["thread (3): something-else"]) == "something-else"
    assert role_of(["claim (shared/idempotency.py:41)"]) == "other"


def test_categories_tell_lock_waits_from_statements_commits_and_idling() -> None:
    assert category([WORKER, *BEGIN]).startswith("sqlite: BEGIN IMMEDIATE")
    assert category([CONSUMER, BEGIN[1]]) == "sqlite: executing statements"
    assert category([CONSUMER, "DefaultDialect.do_commit (sqlalchemy/engine/default.py:9)"]) == (
        "sqlite: COMMIT"
    )
    assert category([WORKER, "Condition.wait (threading.py:327)"]) == IDLE
    assert category([CONSUMER, "ConsumerWorker._run (shared/consumer.py:162)"]).startswith(
        "kafka: Consumer.consume"
    )
    assert category([CONSUMER, "_next_batch (shared/consumer.py:391)"]).startswith(
        "kafka: Consumer.consume"
    )
    assert category([CONSUMER, "Session.flush (sqlalchemy/orm/session.py:1)"]) == (
        "python: SQLAlchemy"
    )
    assert category([CONSUMER, "claim (shared/idempotency.py:30)"]) == "python: our code"


def test_profile_summary_shares_per_role_and_blames_our_deepest_frame() -> None:
    summary = profile_summary(parse_folded(FOLDED))
    assert summary["samples"] == 20
    consumer = summary["roles"]["consumer"]
    assert consumer["threads"] == 1
    assert consumer["samples"] == 10
    assert consumer["categories"]["sqlite: executing statements"] == 0.6
    assert consumer["categories"]["sqlite: COMMIT"] == 0.2
    workers = summary["roles"]["HTTP handlers (threadpool)"]
    assert workers["categories"][IDLE] == 0.3
    # not idle: 6 + 2 + 7 samples (consume waits and queue waits left out)
    assert summary["busy_samples"] == 15
    ours = dict(summary["ours"])
    assert ours["place_order (services/order/api.py)"] == pytest.approx(7 / 15)
    assert ours["claim (shared/idempotency.py)"] == pytest.approx(6 / 15)
    assert math.isclose(sum(ours.values()), 1.0)


def test_a_thread_under_a_process_frame_keeps_its_role() -> None:
    process = 'process 12:"python -m services order"'
    assert role_of([process, "thread (7): outbox-relay", "x (a.py:1)"]) == "outbox relay"
    summary = profile_summary([([process, CONSUMER, "claim (shared/idempotency.py:30)"], 3)])
    assert summary["roles"]["consumer"]["threads"] == 1


def test_cpu_self_time_is_each_leaf_function_s_share_of_the_samples() -> None:
    speedscope = {
        "shared": {
            "frames": [
                {"name": "run", "file": "/x/lib/python3.11/threading.py"},
                {"name": "claim", "file": "/repo/shared/messaging/idempotency.py"},
                {"name": "do_execute", "file": "/v/site-packages/sqlalchemy/engine/default.py"},
            ]
        },
        "profiles": [
            {"name": 'Process 1 Thread 2 "consumer-orders"', "samples": [[0, 1], [0, 1, 2]] * 2},
            {"name": 'Process 1 Thread 3 "outbox-relay"', "samples": [[0, 2], [0, 2], []]},
        ],
    }
    summary = cpu_self_summary(speedscope)
    assert summary["samples"] == 6
    assert dict(summary["leaf"]) == {
        "do_execute (sqlalchemy/engine/default.py)": pytest.approx(4 / 6),
        "claim (shared/messaging/idempotency.py)": pytest.approx(2 / 6),
    }
    assert dict(summary["threads"]) == {
        "consumer": pytest.approx(4 / 6),
        "outbox relay": pytest.approx(2 / 6),
    }
    cpu = {**cpu_headline(None), "per_process": {"order": 3.0}}
    profile = {"roles": {}, "ours": [], "samples": 1, "cpu_self": summary}
    text = render({"cpu_ms_per_order": cpu, "profiles": {"order": profile}})
    assert "2.00 ms/order  do_execute (sqlalchemy/engine/default.py)" in text


def test_render_survives_a_profile_that_failed() -> None:
    text = render({"profiles": {"order": {"error": "py-spy wrote no profile"}}})
    assert "py-spy wrote no profile" in text


def test_lua_data_quotes_strings_and_carries_the_mix() -> None:
    mix = OrderMix(tokens=['t"1', "t2"], ample=["a", "b"], scarce=["c"], scarce_share=0.25)
    text = lua_data(mix, interval_ms=12.5)
    assert 'tokens = {"t\\"1", "t2"}' in text
    assert 'ample = {"a", "b"}' in text
    assert 'scarce = {"c"}' in text
    assert "scarce_share = 0.25" in text
    assert "interval_ms = 12.5" in text
    assert 'path = "/orders"' in text
    assert lua_string("a\\b\n") == '"a\\\\b\\n"'


def test_pacing_spreads_the_rate_over_wrks_threads() -> None:
    assert pacing_interval_ms(None, 1) == 0.0
    assert pacing_interval_ms(100, 1) == 10.0
    assert pacing_interval_ms(400, 2) == 5.0


def test_profile_summary_skips_threads_without_python_frames() -> None:
    summary = profile_summary(parse_folded(["thread (9): rdk:main 5\n", *FOLDED]))
    assert summary["samples"] == 25
    assert summary["busy_samples"] == 15


def test_cpu_seconds_adds_up_each_sample_over_its_interval() -> None:
    samples = [
        (0.5, "order", 100.0, 0.0),
        (1.0, "order", 50.0, 0.0),
        (1.5, "order", 200.0, 0.0),  # two cores' worth
        (2.0, "order", 100.0, 0.0),  # outside (end is 1.5)
        (1.0, "kafka", 20.0, 0.0),
    ]
    spent = cpu_seconds(samples, 0.0, 1.5, 0.5)
    assert spent["order"] == pytest.approx(0.5 + 0.25 + 1.0)
    assert spent["kafka"] == pytest.approx(0.1)


def test_cpu_seconds_counts_the_time_each_sample_covers_when_rounds_run_late() -> None:
    """On a busy machine the sampler's rounds take longer than its period: a sample
    taken 2 s after the one before covers 2 s, not one period."""
    samples = [
        (0.5, "order", 50.0, 0.0),
        (2.5, "order", 50.0, 0.0),  # 2 s after the previous round
        (3.0, "order", 100.0, 0.0),
        (3.0, "wrk", 10.0, 0.0),  # its first sample: one period
    ]
    spent = cpu_seconds(samples, 0.0, 3.0, 0.5)
    assert spent["order"] == pytest.approx(0.25 + 1.0 + 0.5)
    assert spent["wrk"] == pytest.approx(0.05)


def e2e_run(
    *,
    cpu: dict[str, float],
    completed: float = 1200.0,
    errors: int = 0,
    lost: int = 0,
    doubled: int = 0,
    p99: float = 80.0,
    rate: float | None = None,
    rss: float = 120.0,
) -> dict[str, object]:
    processes = {
        name: {"cpu_mean": 0.0, "cpu_max": 0.0, "rss_peak_mib": rss, "cpu_ms_per_order": ms}
        for name, ms in cpu.items()
    }
    processes["system"] = {"cpu_mean": 0.0, "cpu_max": 0.0, "rss_peak_mib": 9999.0}
    return {
        "services": ["order", "inventory", "product", "user"],
        "processes": processes,
        "outcomes": {"CONFIRMED": 900, "REJECTED": 100},
        "completed_per_s": completed,
        "errors": errors,
        "lost": lost,
        "doubled": doubled,
        "latency_ms": {"p99": p99},
        "load": {"rate": rate},
    }


FAST = {"order": 0.8, "inventory": 0.5, "product": 0.2, "user": 0.1, "kafka": 0.9, "wrk": 3.0}


def fast_result() -> dict[str, object]:
    return {
        "e2e": e2e_run(cpu=FAST),
        "paced": e2e_run(cpu=FAST, completed=600.0, p99=60.0, rate=600.0),
        "consumer": {
            "phases": [
                {"name": PHASE_WORKER_ORDERS, "events_per_s": 6500.0},
                {"name": PHASE_RAW_DECODE, "events_per_s": 20000.0},
            ]
        },
        "relay": {"relay_per_s": 25000.0, "raw_per_s": 90000.0, "verified": True},
    }


def by_name(targets: list[dict[str, object]]) -> dict[str, dict[str, object]]:
    return {str(t["name"]): t for t in targets}


def test_cpu_headline_sums_the_services_and_keeps_the_broker_apart() -> None:
    headline = cpu_headline(e2e_run(cpu=FAST))
    assert headline["services_total"] == pytest.approx(1.6)
    assert headline["broker"] == 0.9
    assert headline["per_process"]["wrk"] == 3.0
    assert "system" not in headline["per_process"]
    assert headline["orders"] == 1000


def test_cpu_headline_has_no_total_when_a_service_was_not_measured() -> None:
    headline = cpu_headline(e2e_run(cpu={"order": 1.0, "inventory": 1.0, "kafka": 0.5}))
    assert headline["services_total"] is None
    assert headline["broker"] == 0.5
    assert cpu_headline(None)["services_total"] is None


def test_target_is_met_not_met_or_not_measured() -> None:
    assert target("x", "<=", 2, "ms", 2.0)["status"] == MET
    assert target("x", "<=", 2, "ms", 2.01)["status"] == NOT_MET
    assert target("x", ">=", 1000, "/s", 999.9)["status"] == NOT_MET
    assert target("x", ">=", 1000, "/s", 1000)["status"] == MET
    assert target("x", "<=", 0, "", 0)["status"] == MET
    assert target("x", "<=", 2, "ms", None)["status"] == NOT_MEASURED
    assert target("x", ">=", 1, "/s", 5, valid=False)["status"] == NOT_MET


def test_every_target_is_met_by_a_fast_enough_result() -> None:
    targets = evaluate_targets(fast_result())
    assert len(targets) == 11
    assert {t["status"] for t in targets} == {MET}, [t for t in targets if t["status"] != MET]


def test_each_stack_is_held_to_its_own_targets() -> None:
    result = fast_result()
    result["e2e"] = e2e_run(cpu={**FAST, "order": 1.5, "kafka": 1.2}, completed=600.0)
    targets = {stack: by_name(evaluate_targets(result, stack)) for stack in STACK_TARGETS}
    services, rate = "services CPU per completed order", "completed orders/s, steady window"
    brokers = "broker CPU per completed order"
    assert targets["default"][services]["status"] == NOT_MET  # 2.3 ms
    assert targets["postgres"][services]["status"] == MET
    assert targets["default"][brokers]["status"] == MET  # 1.2 ms over three brokers
    assert targets["single"][brokers]["status"] == NOT_MET
    assert targets["default"][rate]["status"] == MET  # 600/s
    assert targets["single"][rate]["status"] == NOT_MET
    with pytest.raises(KeyError):
        evaluate_targets(result, "nonsense")


def test_targets_read_each_figure_from_its_own_run() -> None:
    result = fast_result()
    slow = {**FAST, "order": 5.0, "kafka": 1.6}
    result["e2e"] = e2e_run(cpu=slow, completed=128.0, lost=2, rss=151.0)
    result["paced"] = e2e_run(cpu=FAST, p99=192.0, rate=64.0, doubled=1, errors=3)
    result["consumer"]["phases"][0]["events_per_s"] = 3000.0  # type: ignore[index]
    targets = by_name(evaluate_targets(result))
    assert targets["services CPU per completed order"]["value"] == pytest.approx(5.8)
    assert targets["services CPU per completed order"]["status"] == NOT_MET
    assert targets["broker CPU per completed order"]["status"] == NOT_MET
    assert targets["completed orders/s, steady window"]["value"] == 128.0
    assert targets["lost orders (accepted, no outcome)"]["value"] == 2
    assert targets["lost orders (accepted, no outcome)"]["detail"] == "unpaced 2, paced 0"
    assert targets["doubled orders (2+ outcome records)"]["status"] == NOT_MET
    assert targets["errors (non-202 + socket errors)"]["value"] == 3
    assert targets["p99 request->outcome at half rate"]["value"] == 192.0
    assert targets["p99 request->outcome at half rate"]["status"] == NOT_MET
    assert targets["inventory consumer, order-created/s"]["status"] == NOT_MET
    assert targets["inventory consumer / raw consume+decode"]["value"] == pytest.approx(0.15)
    assert targets["peak RSS per service process"]["value"] == 151.0
    assert targets["peak RSS per service process"]["status"] == NOT_MET


def test_missing_parts_are_not_measured_and_a_failed_relay_check_is_not_met() -> None:
    relay_result = {"relay_per_s": 50000.0, "verified": False, "problem": "relay topic holds 99999"}
    targets = by_name(evaluate_targets({"relay": relay_result}))
    relay = targets.pop("outbox relay drain, events/s")
    assert relay["status"] == NOT_MET
    assert relay["detail"] == "relay topic holds 99999"
    assert {t["status"] for t in targets.values()} == {NOT_MEASURED}


def test_the_stack_line_names_brokers_database_and_span_export() -> None:
    sampled = {
        "brokers": 3,
        "database": "sqlite",
        "OTEL_TRACES_EXPORTER": "zipkin",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.1",
    }
    assert describe_stack("default", sampled) == (
        "stack: default (3 broker(s), sqlite, spans to zipkin, parentbased_traceidratio 0.1)"
    )
    quiet = {"brokers": 1, "OTEL_TRACES_EXPORTER": "none", "OTEL_TRACES_SAMPLER_ARG": "0.1"}
    assert describe_stack("single", quiet) == "stack: single (1 broker(s), no span export)"
    assert render_headline({"stack": "postgres"})[0] == "stack: postgres (no span export)"


def test_render_opens_with_the_cpu_headline_then_the_targets() -> None:
    result = fast_result()
    result["cpu_ms_per_order"] = cpu_headline(result["e2e"])  # type: ignore[arg-type]
    result["targets"] = evaluate_targets(result)
    lines = render_headline(result)
    assert lines[0].startswith("CPU per completed order (1000 orders")
    assert "services total (order+inventory+product+user)" in lines[1]
    assert "1.60 ms" in lines[1] and "target <= 2 ms: met" in lines[1]
    assert "broker (kafka)" in lines[2] and "0.90 ms" in lines[2]
    assert "targets" in lines
    table = lines[lines.index("targets") + 1 :]
    assert len(table) == 11
    assert all(line.rstrip().split("  (")[0].endswith(MET) for line in table)
    top = {key: result[key] for key in ("cpu_ms_per_order", "targets")}
    assert render(top) == "\n".join(lines)


def test_render_reports_a_part_that_failed() -> None:
    text = render({"relay_error": "RuntimeError('broker away')", "targets": []})
    assert "relay: failed: RuntimeError('broker away')" in text


def test_cpu_headline_keeps_the_database_server_out_of_the_services_total() -> None:
    headline = cpu_headline(e2e_run(cpu={**FAST, "postgres": 2.5}))
    assert headline["database"] == 2.5
    assert headline["services_total"] == pytest.approx(1.6)
    assert cpu_headline(e2e_run(cpu=FAST))["database"] is None
