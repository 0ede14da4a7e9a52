"""The event explorer's model and app without a broker: chains, states, malformed records,
dead letters, lag, and memory that stays bounded."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from shared.messaging.envelope import Envelope, KafkaHeaders
from tests.helpers import ConsumedRecord
from tools.local.stack import Stack
from tools.ops.explorer import app as explorer_app
from tools.ops.explorer.app import create_app
from tools.ops.explorer.config import ExplorerSettings
from tools.ops.explorer.kafka import ours, topic_pattern
from tools.ops.explorer.model import LagHistory, ShopView
from tools.ops.search import Found, Query

pytestmark = pytest.mark.unit

PREFIX = "t-1-"
T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@dataclass
class Record(ConsumedRecord):
    """A consumed Kafka record."""

    topic_: str
    value_: bytes | None
    key_: bytes | None = None
    headers_: KafkaHeaders = field(default_factory=list)
    partition_: int = 0
    offset_: int = 0


def event(
    type: str,
    topic: str,
    key: str,
    *,
    id: str,
    cause: str | None = None,
    ms: int = 0,
    service: str = "order",
    correlation: str | None = None,
    partition: int = 1,
    offset: int = 0,
    traceparent: str | None = None,
) -> Record:
    envelope = Envelope(
        type=type,
        source=f"/services/{service}",
        key=key,
        data=orjson.dumps({"order_id": key}),
        id=id,
        time=T0 + timedelta(milliseconds=ms),
        correlation_id=correlation or key,
        causation_id=cause,
        traceparent=traceparent,
    )
    return Record(
        PREFIX + topic, envelope.data, key.encode(), envelope.headers(), partition, offset
    )


def saga(order: str, outcome: str = "confirmed") -> list[Record]:
    """An order's events: created (by a request), reserved or short, confirmed or rejected."""
    reply = "stock-reserved" if outcome == "confirmed" else "stock-shortage"
    return [
        event("order-created", "orders", order, id=f"{order}-1", cause="request-1", offset=5),
        event(
            reply, "stock", order, id=f"{order}-2", cause=f"{order}-1", ms=9, service="inventory"
        ),
        event(f"order-{outcome}", "orders", order, id=f"{order}-3", cause=f"{order}-2", ms=16),
    ]


def view_of(records: list[Record], **limits: int) -> ShopView:
    view = ShopView(PREFIX, **limits)
    for record in records:
        view.add(record)
    return view


def test_chain_links_each_event_to_its_cause_across_services_in_time_order() -> None:
    created, reserved, confirmed = saga("o1")
    view = view_of([confirmed, reserved, created])  # read from three partitions, any order

    chain = view.order("o1")

    assert chain is not None
    assert [e["type"] for e in chain["chain"]] == [
        "order-created",
        "stock-reserved",
        "order-confirmed",
    ]
    assert [e["cause"] for e in chain["chain"]] == [None, 0, 1]
    assert [e["service"] for e in chain["chain"]] == ["order", "inventory", "order"]
    assert chain["chain"][0]["where"] == "orders[1]@5"
    assert chain["chain"][0]["causation_id"] == "request-1"
    assert chain["lanes"] == ["inventory", "order"]


@pytest.mark.parametrize(
    ("types", "state"),
    [
        (["order-created"], "PENDING"),
        (["order-created", "stock-reserved", "order-confirmed"], "CONFIRMED"),
        (["order-rejected", "stock-shortage", "order-created"], "REJECTED"),
        (["order-created", "order-confirmed", "order-cancelled", "stock-released"], "CANCELLED"),
        (["order-cancelled", "order-confirmed"], "CANCELLED"),
        (["stock-reserved"], "UNKNOWN"),
    ],
)
def test_state_follows_from_which_events_were_seen_not_their_order(
    types: list[str], state: str
) -> None:
    records = [
        event(t, "stock" if t.startswith("stock") else "orders", "o1", id=f"e{i}", offset=i)
        for i, t in enumerate(types)
    ]
    assert view_of(records).snapshot()["orders"][0]["state"] == state


def test_counters_count_each_order_once_in_its_latest_state() -> None:
    records = [*saga("o1"), *saga("o2", "rejected"), *saga("o3"), *saga("o4")[:1]]
    records.append(event("order-cancelled", "orders", "o3", id="o3-4", ms=40))
    counters = view_of(records, max_orders=2).snapshot()["counters"]
    assert {k: counters[k] for k in ("orders", "confirmed", "rejected", "cancelled")} == {
        "orders": 4,
        "confirmed": 1,
        "rejected": 1,
        "cancelled": 1,
    }
    assert counters["in_flight"] == 1


def test_each_hop_names_the_services_whose_group_has_read_past_it() -> None:
    view = view_of(saga("o1"))  # orders[1]@5, stock[1]@0, orders[1]@0
    view.set_offsets(
        {PREFIX + "orders": {1: (0, 6)}, PREFIX + "stock": {1: (0, 1)}},
        {
            PREFIX + "inventory": {"state": "stable", "offsets": {(PREFIX + "orders", 1): 6}},
            PREFIX + "user": {"state": "stable", "offsets": {(PREFIX + "orders", 1): 3}},
            PREFIX + "order": {"state": "stable", "offsets": {(PREFIX + "stock", 1): 1}},
            "redrive-user": {"state": "empty", "offsets": {(PREFIX + "orders", 1): 9}},
        },
    )
    chain = view.order("o1")
    assert chain is not None
    assert [(e["type"], e["read_by"], e["waiting"]) for e in chain["chain"]] == [
        ("order-created", ["inventory"], ["user"]),
        ("stock-reserved", ["order"], []),
        ("order-confirmed", ["inventory", "user"], []),
    ]


def test_events_correlated_with_an_order_join_its_chain() -> None:
    created = saga("o1")[0]
    changed = event(
        "stock-changed",
        "stock-changes",
        "product-1",
        id="c1",
        cause="o1-1",
        correlation="o1",
        service="inventory",
    )
    unrelated = event("user-registered", "users", "user-1", id="u1", service="user")
    chain = view_of([created, changed, unrelated]).order("o1")
    assert chain is not None
    assert [e["type"] for e in chain["chain"]] == ["order-created", "stock-changed"]
    assert chain["chain"][1]["where"] == "stock-changes[1]@0"


def test_a_redelivered_or_redriven_event_shows_once() -> None:
    created = saga("o1")[0]
    again = event("order-created", "orders", "o1", id="o1-1", cause="request-1", offset=9)
    view = view_of([created, again])
    assert view.snapshot()["counters"]["orders"] == 1
    assert len(view.order("o1")["chain"]) == 1  # type: ignore[index]


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (Record(PREFIX + "orders", b"\x00\xffgarbage", b"k"), "missing CloudEvents header"),
        (Record(PREFIX + "orders", None, b"k"), "no value"),
        (Record(PREFIX + "stock", b"{not json", b"o1", saga("o1")[1].headers_), "not JSON"),
        (Record(PREFIX + "orders", b"{}", b"\xff\xfe", saga("o1")[0].headers_), "UTF-8"),
        (Record(PREFIX + "dead-letters", b"{}", b"k"), "dlq_reason"),
    ],
)
def test_malformed_records_are_listed_as_undecodable_and_reading_goes_on(
    record: Record, reason: str
) -> None:
    record.partition_, record.offset_ = 2, 7
    view = view_of([record, *saga("o1")])

    snapshot = view.snapshot()
    [bad] = snapshot["undecodable"]
    assert reason in bad["reason"]
    assert bad["where"] == f"{record.topic_.removeprefix(PREFIX)}[2]@7"
    assert snapshot["counters"]["undecodable"] == 1
    assert snapshot["orders"][0]["state"] == "CONFIRMED"


def test_memory_stays_bounded_while_counters_keep_counting() -> None:
    view = ShopView(PREFIX, max_orders=5, max_hops=2, max_letters=3, max_undecodable=3)
    for n in range(50):
        for record in saga(f"o{n}"):
            view.add(record)
        view.add(Record(PREFIX + "orders", b"junk", offset_=n))
    snapshot = view.snapshot()
    assert len(view.orders) == 5
    assert [o["id"] for o in snapshot["orders"]][0] == "o49"
    assert snapshot["counters"]["orders"] == 50
    assert snapshot["counters"]["confirmed"] == 50
    assert snapshot["counters"]["undecodable"] == 50
    assert len(snapshot["undecodable"]) == 3
    chain = view.order("o49")
    assert chain is not None
    assert len(chain["chain"]) == 2
    assert chain["dropped"] == 1
    assert chain["events"] == 3


def dead_letter(partition: int, offset: int, consumer: str = "inventory") -> Record:
    headers: KafkaHeaders = [
        ("dlq_reason", b"invalid-envelope"),
        ("dlq_error", b"missing CloudEvents header(s): ce_specversion"),
        ("dlq_topic", (PREFIX + "orders").encode()),
        ("dlq_partition", b"1"),
        ("dlq_offset", b"12"),
        ("dlq_consumer", consumer.encode()),
        ("dlq_time", b"2026-11-30T12:00:01.000000Z"),
    ]
    return Record(PREFIX + "dead-letters", b"garbage", b"k", headers, partition, offset)


def test_dead_letters_show_reason_origin_and_whether_a_redrive_passed_them() -> None:
    view = view_of([dead_letter(0, 0), dead_letter(0, 1), dead_letter(2, 0, consumer="user")])
    view.set_offsets(
        {PREFIX + "dead-letters": {0: (0, 2), 1: (0, 0), 2: (0, 1)}},
        {"redrive-inventory": {"state": "empty", "offsets": {(PREFIX + "dead-letters", 0): 1}}},
    )
    letters = view.snapshot()["dead_letters"]
    assert [(d["where"], d["redriven"]) for d in letters] == [
        ("dead-letters[2]@0", False),
        ("dead-letters[0]@1", False),
        ("dead-letters[0]@0", True),
    ]
    assert letters[0]["reason"] == "invalid-envelope"
    assert letters[0]["origin"] == "orders[1]@12"
    assert letters[0]["consumer"] == "user"
    assert view.snapshot()["counters"]["dead_letters"] == 3


def test_lag_is_each_groups_distance_to_the_end_and_the_total_leaves_out_redrives() -> None:
    view = ShopView(PREFIX)
    orders, letters = PREFIX + "orders", PREFIX + "dead-letters"
    view.set_offsets(
        {orders: {0: (0, 10), 1: (2, 7)}, letters: {0: (0, 4)}},
        {
            "t-1-inventory": {"state": "stable", "offsets": {(orders, 0): 8, (orders, 1): 7}},
            "t-1-user": {"state": "stable", "offsets": {(orders, 0): 10, (orders, 1): 3}},
            "redrive-user": {"state": "empty", "offsets": {(letters, 0): 1}},
        },
    )
    snapshot = view.snapshot()
    lag = {g["group"]: g["lag"] for g in snapshot["groups"]}
    assert lag == {"redrive-user": 3, "t-1-inventory": 2, "t-1-user": 4}
    assert snapshot["counters"]["lag"] == 6
    topics = {t["topic"]: t for t in snapshot["topics"]}
    assert topics["orders"]["end"] == 17
    assert topics["orders"]["records"] == 15
    assert [p["end"] for p in topics["orders"]["partitions"]] == [10, 7]


def test_version_grows_only_when_something_changed() -> None:
    view = ShopView(PREFIX)
    before = view.version
    view.set_offsets({}, {})
    assert view.version == before
    view.add(saga("o1")[0])
    view.set_offsets({PREFIX + "orders": {0: (0, 1)}}, {})
    assert view.version == before + 2


def test_the_subscription_covers_the_prefix_and_nothing_internal() -> None:
    assert topic_pattern("e2e-ab.c-") == "^e2e-ab\\.c-.*"
    assert topic_pattern("") == "^[^_].*"


@pytest.mark.parametrize(
    ("name", "prefix", "included"),
    [
        ("t-1-orders", "t-1-", True),
        ("orders", "t-1-", False),
        ("orders", "", True),
        ("dead-letters", "", True),
        ("stock-changes", "", True),
        ("__consumer_offsets", "", False),
        ("e2e-1a2b3c4d5e-orders", "", False),
        ("e2e-1a2b3c4d5e-inventory", "", False),
    ],
)
def test_the_stack_without_a_prefix_leaves_out_the_prefixed_stacks(
    name: str, prefix: str, included: bool
) -> None:
    assert ours(name, prefix) is included


@pytest.fixture
def app_client() -> Any:
    app = create_app(ExplorerSettings(topic_prefix=PREFIX), observe=False)
    with TestClient(app) as client:
        yield app, client


def test_the_app_serves_the_page_snapshots_and_chains(app_client: Any) -> None:
    app, client = app_client
    for record in saga("o1", "rejected"):
        app.state.view.add(record)
    page = client.get("/")
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    assert "/static/explorer.js" in page.text
    assert client.get("/static/explorer.js").status_code == 200
    snapshot = client.get("/api/snapshot").json()
    assert snapshot["orders"][0]["state"] == "REJECTED"
    assert snapshot["counters"]["rejected"] == 1
    assert client.get("/api/orders/o1").json()["chain"][1]["type"] == "stock-shortage"
    assert client.get("/api/orders/nobody").status_code == 404
    assert client.get("/ready").status_code == 200


def test_redrive_takes_only_a_consumer_name(app_client: Any) -> None:
    _, client = app_client
    assert client.post("/api/redrive", json={"consumer": "../etc"}).status_code == 422
    assert client.post("/api/redrive", json={}).status_code == 422
    # a page elsewhere can post text/plain without asking first: it is not JSON here
    body, plain = b'{"consumer": "inventory"}', {"content-type": "text/plain"}
    assert client.post("/api/redrive", content=body, headers=plain).status_code == 422


def test_the_stack_runs_the_explorer_only_when_given_its_port(tmp_path: Path) -> None:
    assert Stack(run_dir=tmp_path, kafka="127.0.0.1:1").explorer is None
    stack = Stack(run_dir=tmp_path, kafka="127.0.0.1:1", explorer_port=18090)
    assert stack.explorer is not None
    assert stack.explorer.url == "http://127.0.0.1:18090"
    assert stack.explorer.pid_file == tmp_path / "pids" / "explorer.pid"
    assert stack.status()["explorer"] == "down"
    assert "explorer" not in stack.services


def test_an_undecodable_value_is_shown_with_its_unprintable_bytes_escaped() -> None:
    view = view_of([Record(PREFIX + "orders", b"\x00\x01 not an event\xff")])
    assert view.snapshot()["undecodable"][0]["value"] == "\\x00\\x01 not an event\\xff"


def outbox_notice(offset: int, reason: str, placed: tuple[int, int] | None = None) -> Record:
    """A relay's notice of a parked row, as shared.messaging.parking sends it."""
    headers: KafkaHeaders = [
        ("dlq_reason", reason.encode()),
        ("dlq_error", b"refused by Kafka: MSG_SIZE_TOO_LARGE"),
        ("dlq_topic", (PREFIX + "orders").encode()),
        ("dlq_consumer", b"order-outbox"),
        ("dlq_source", b"outbox"),
        ("dlq_time", b"2026-11-30T12:00:02.000000Z"),
        ("ce_id", f"event-{offset}".encode()),
        ("ce_type", b"order-created"),
    ]
    if placed is not None:
        headers += [("dlq_partition", str(placed[0]).encode()), ("dlq_offset", b"%d" % placed[1])]
    return Record(PREFIX + "dead-letters", None, b"o1", headers, 0, offset)


def test_a_parked_outbox_row_is_listed_with_its_retry_command_and_never_offered_a_redrive() -> None:
    view = view_of(
        [
            dead_letter(0, 0),
            outbox_notice(1, "unpublishable"),
            outbox_notice(2, "unrecorded", placed=(2, 40)),
        ]
    )
    view.set_offsets(
        {PREFIX + "dead-letters": {0: (0, 3)}},
        {"redrive-all": {"state": "empty", "offsets": {(PREFIX + "dead-letters", 0): 3}}},
    )

    snapshot = view.snapshot()
    unrecorded, unpublishable, letter = snapshot["dead_letters"]
    assert (unpublishable["origin"], unpublishable["reason"]) == (
        "orders (not published)",
        "unpublishable",
    )
    assert unrecorded["origin"] == "orders[2]@40"
    for notice in (unrecorded, unpublishable):
        assert notice["outbox"] and not notice["redriven"]
        assert notice["consumer"] == "order-outbox" and notice["type"] == "order-created"
        assert notice["retry"] == f"python -m tools.ops.outbox order retry {notice['event_id']}"
    assert unpublishable["event_id"] == "event-1"
    assert not letter["outbox"] and letter["redriven"] and letter["retry"] == ""
    assert snapshot["counters"]["dead_letters"] == 1
    assert snapshot["counters"]["parked"] == 2
    assert snapshot["undecodable"] == []


TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACE_URL = "http://127.0.0.1:9411/zipkin/traces/{trace_id}"


def traced_order(order: str, traceparent: str | None) -> list[Record]:
    """An order created by a request in the trace of `traceparent`, then reserved."""
    return [
        event("order-created", "orders", order, id=f"{order}-1", traceparent=traceparent),
        event(
            "stock-reserved",
            "stock",
            order,
            id=f"{order}-2",
            cause=f"{order}-1",
            ms=5,
            service="inventory",
            traceparent=traceparent,
        ),
    ]


@pytest.mark.parametrize(
    ("flags", "sampled"), [("01", True), ("00", False), ("03", True), ("02", False)]
)
def test_an_order_links_to_its_trace_only_when_its_traceparent_says_sampled(
    flags: str, sampled: bool
) -> None:
    view = ShopView(PREFIX, trace_url=TRACE_URL)
    for record in traced_order("o1", f"00-{TRACE}-00f067aa0ba902b7-{flags}"):
        view.add(record)

    chain = view.order("o1")
    listed = view.snapshot()["orders"][0]

    link = f"http://127.0.0.1:9411/zipkin/traces/{TRACE}" if sampled else None
    assert chain is not None
    assert chain["trace"] == {"id": TRACE, "sampled": sampled, "url": link}
    assert listed["trace"] == chain["trace"]
    assert [(e["trace_id"], e["sampled"]) for e in chain["chain"]] == [(TRACE, sampled)] * 2


def test_a_sampled_trace_is_not_linked_without_a_trace_address() -> None:
    view = view_of(traced_order("o1", f"00-{TRACE}-00f067aa0ba902b7-01"))

    chain = view.order("o1")

    assert chain is not None
    assert chain["trace"] == {"id": TRACE, "sampled": True, "url": None}


@pytest.mark.parametrize(
    "traceparent",
    [
        None,
        "",
        f"00-{TRACE}-00f067aa0ba902b7-1",  # one flag digit
        f"00-{TRACE}-0000000000000000-01",  # the zero span
        f"00-{'0' * 32}-00f067aa0ba902b7-01",  # the zero trace
        f"ff-{TRACE}-00f067aa0ba902b7-01",  # the forbidden version
        f"00-{TRACE.upper()}-00f067aa0ba902b7-01",  # upper case
        f"00-{TRACE}-00f067aa0ba902b7-01-extra",  # version 00 has four fields
        f"00-{TRACE}-00f067aa0ba902b7-01\x00",
        "00-" + "a" * 5000,
    ],
)
def test_an_order_whose_traceparent_is_missing_or_malformed_links_to_no_trace(
    traceparent: str | None,
) -> None:
    view = ShopView(PREFIX, trace_url=TRACE_URL)
    for record in traced_order("o1", traceparent):
        view.add(record)

    chain = view.order("o1")

    assert chain is not None, "the order is shown all the same"
    assert chain["trace"] is None
    assert {(e["trace_id"], e["sampled"]) for e in chain["chain"]} == {(None, False)}


def test_the_orders_trace_is_the_one_its_creation_carries() -> None:
    other = "0af7651916cd43dd8448eb211c80319c"
    view = ShopView(PREFIX, trace_url=TRACE_URL)
    cancel = event(
        "order-cancelled",
        "orders",
        "o1",
        id="o1-9",
        ms=-5,  # read first, stamped earlier: a cancel in a trace of its own
        traceparent=f"00-{other}-00f067aa0ba902b7-01",
    )
    for record in [cancel, *traced_order("o1", f"00-{TRACE}-00f067aa0ba902b7-00")]:
        view.add(record)

    chain = view.order("o1")

    assert chain is not None
    assert chain["trace"] == {"id": TRACE, "sampled": False, "url": None}


@pytest.mark.parametrize(
    "address",
    [
        "javascript:alert(1)//{trace_id}",
        "ftp://127.0.0.1/{trace_id}",
        "http://127.0.0.1:9411/zipkin/traces/",
        "http://127.0.0.1/{trace_id}/{trace_id}",
        "http://127.0.0.1/{trace_id}?other={x}",
        "http://127.0.0.1/ {trace_id}",
        "http:///{trace_id}",
        "http://127.0.0.1/" + "a" * 3000 + "{trace_id}",
    ],
)
def test_a_trace_address_that_is_not_http_with_one_trace_id_is_refused(
    address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXPLORER_TRACE_URL", address)
    with pytest.raises(ValueError, match="trace_url"):
        ExplorerSettings()


def test_the_stack_points_its_explorer_at_its_zipkins_traces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    monkeypatch.delenv("EXPLORER_TRACE_URL", raising=False)
    stack = Stack(run_dir=tmp_path, kafka="127.0.0.1:1", traces=True, explorer_port=18090)
    assert stack.explorer is not None and stack.zipkin is not None
    address = stack.explorer.env["EXPLORER_TRACE_URL"]
    assert address == "http://127.0.0.1:9411/zipkin/traces/{trace_id}"
    assert ExplorerSettings(trace_url=address).trace_url == address

    untraced = Stack(run_dir=tmp_path, kafka="127.0.0.1:1", explorer_port=18090)
    assert untraced.explorer is not None
    assert "EXPLORER_TRACE_URL" not in untraced.explorer.env


def test_lag_history_keeps_a_sample_every_interval_and_stays_bounded() -> None:
    history = LagHistory(every=5, points=3, groups=2)
    assert history.sample(100.0, {"a": 4, "b": 0})
    assert not history.sample(102.0, {"a": 9, "b": 9}), "sooner than `every`: not taken"
    for n in range(1, 5):
        assert history.sample(100.0 + 5 * n, {"a": n, "b": 10 * n})
    served = {g["group"]: g for g in history.as_dict()["groups"]}
    assert served["a"]["points"] == [[110.0, 2], [115.0, 3], [120.0, 4]], "the last 3"
    assert (served["b"]["lag"], served["b"]["most"]) == (40, 40)
    history.sample(130.0, {"c": 1, "a": 5})  # a third group: the quietest one goes
    assert sorted(history.series) == ["a", "c"]


def test_the_app_serves_each_groups_lag_over_time(app_client: Any) -> None:
    app, client = app_client
    view: ShopView = app.state.view
    view.lag.every = 0.0
    orders = PREFIX + "orders"
    for committed in (2, 6, 10):
        view.set_offsets(
            {orders: {0: (0, 10)}},
            {"t-1-inventory": {"state": "stable", "offsets": {(orders, 0): committed}}},
        )
    served = client.get("/api/lag").json()
    (group,) = served["groups"]
    assert group["group"] == "t-1-inventory"
    assert [lag for _, lag in group["points"]] == [8, 4, 0]
    assert (group["lag"], group["most"]) == (0, 8)
    assert "/api/lag" in client.get("/static/explorer.js").text


@pytest.mark.parametrize(
    "params",
    [
        {"key": "a\x00b"},
        {"key": "k" * 5000},
        {"id": "x" * 200},
        {"id": "<script>"},
        {"type": "order created"},
        {"header": "no-equals"},
        {"header": "ce_id=" + "v" * 1000},
        {"header": "ce_id=\x01"},
        {"since": "yesterday"},
        {"since": "2026-12-07T06:00:00"},
        {"since": "9" * 10_000},
        {"until": "2026-12-07T06:00:00Z\x00"},
        {"since": "2026-12-07T06:00:00Z", "until": "2026-12-07T05:00:00Z"},
        {"limit": "0"},
        {"limit": "100000"},
        {"limit": "-1"},
        {"limit": "ten"},
        {"topic": "../etc"},
        {"topic": "not-a-stack-topic"},
        {"unknown": "x"},
        {"x" * 5000: "y"},
    ],
    ids=lambda params: "+".join(params)[:20] + ":" + str(len(str(params))),
)
def test_a_hostile_search_is_refused_before_the_broker_is_asked(
    app_client: Any, params: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, client = app_client
    monkeypatch.setattr(explorer_app, "_search", lambda *a: pytest.fail("the broker was asked"))
    answer = client.get("/api/search", params=params)
    assert answer.status_code == 422
    assert len(answer.text) < 4000, "the refusal does not echo a flood"
    assert all({"field", "reason"} <= set(p) for p in answer.json()["detail"])


def test_a_field_given_twice_is_refused(app_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _, client = app_client
    monkeypatch.setattr(explorer_app, "_search", lambda *a: pytest.fail("the broker was asked"))
    answer = client.get("/api/search?key=a&key=b")
    assert answer.status_code == 422
    assert answer.json()["detail"] == [{"field": "key", "reason": "given more than once"}]


def test_a_search_form_becomes_one_query_on_the_stack_topics() -> None:
    query, topics = explorer_app.search_form(
        [
            ("since", "2026-12-07T06:00:00+01:00"),
            ("key", "order-1"),
            ("type", "order-created"),
            ("header", "ce_source=/services/order"),
            ("topic", "orders"),
            ("limit", "7"),
            ("id", ""),  # an empty field of the form: not asked for
        ],
        PREFIX,
    )
    assert topics == [PREFIX + "orders"]
    assert query == Query(
        since=datetime(2026, 12, 7, 5, tzinfo=UTC),
        key="order-1",
        type="order-created",
        header=("ce_source", "/services/order"),
        limit=7,
    )
    everywhere, topics = explorer_app.search_form([], PREFIX)
    assert everywhere.limit == explorer_app.SEARCH_LIMIT and PREFIX + "dead-letters" in topics


def test_a_third_search_at_once_is_answered_429(
    app_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, client = app_client
    release, started = threading.Event(), threading.Semaphore(0)

    def held(*_: object) -> Found:
        started.release()
        assert release.wait(30)
        return Found()

    monkeypatch.setattr(explorer_app, "_search", held)
    answers: list[int] = []
    running = [
        threading.Thread(target=lambda: answers.append(client.get("/api/search").status_code))
        for _ in range(explorer_app.SEARCHES)
    ]
    for thread in running:
        thread.start()
    for _ in running:
        assert started.acquire(timeout=30)
    refused = client.get("/api/search?type=order-created")
    release.set()
    for thread in running:
        thread.join(30)
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert answers == [200] * explorer_app.SEARCHES
