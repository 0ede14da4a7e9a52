"""The search's pieces without a broker: Kafka's murmur2, the checks every value from
outside passes (tools.ops.search, tools.ops.times), matching on a record's key, headers
and timestamp, and `tools.ops.tail` refusing a hostile search before it asks the broker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.clock import utcnow
from tools.ops import search, tail, times

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("key", "java"),
    [
        # org.apache.kafka.common.utils.UtilsTest.testMurmur2: Java's signed results
        ("21", -973932308),
        ("foobar", -790332482),
        ("a-little-bit-long-string", -985981536),
        ("a-little-bit-longer-string", -1486304829),
        ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        ("abc", 479470107),
    ],
)
def test_murmur2_is_kafkas(key: str, java: int) -> None:
    assert search.murmur2(key.encode()) == java & 0xFFFFFFFF


def test_a_key_lands_on_one_partition_of_those_there_are() -> None:
    places = {search.key_partition(f"order-{n}".encode(), 3) for n in range(100)}
    assert places == {0, 1, 2}
    assert search.key_partition(b"21", 7) == (-973932308 & 0x7FFFFFFF) % 7


class Record:
    def __init__(
        self, key: bytes | None, headers: list[tuple[str, bytes]], millis: int = 0
    ) -> None:
        self._key, self._headers, self._millis = key, headers, millis

    def key(self) -> bytes | None:
        return self._key

    def headers(self) -> list[tuple[str, bytes]]:
        return self._headers

    def timestamp(self) -> tuple[int, int]:
        return (1, self._millis) if self._millis else (0, -1)

    def value(self) -> bytes | None:
        return None

    def topic(self) -> str:
        return "t"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 0


def test_a_query_matches_every_field_it_was_given_and_nothing_else() -> None:
    t = datetime(2026, 12, 7, 6, tzinfo=UTC)
    millis = int(t.timestamp() * 1000)
    record = Record(
        b"o-1",
        [("ce_id", b"e-1"), ("ce_type", b"order-created"), ("ce_source", b"/services/order")],
        millis,
    )
    assert search.Query().matches(record)
    assert search.Query(key="o-1", event_id="e-1", type="order-created").matches(record)
    assert search.Query(header=("ce_source", "/services/order")).matches(record)
    assert not search.Query(key="o-2").matches(record)
    assert not search.Query(key="o-1", type="order-rejected").matches(record)
    assert not search.Query(header=("ce_source", "/services/user")).matches(record)
    assert not search.Query(header=("missing", "")).matches(record)
    assert search.Query(since=t, until=t + timedelta(seconds=1)).matches(record)
    assert not search.Query(since=t + timedelta(milliseconds=1)).matches(record)
    assert not search.Query(until=t).matches(record), "until is not included"
    assert not search.Query(key="o-1").matches(Record(None, []))


@pytest.mark.parametrize(
    ("check", "text"),
    [
        (search.key_text, ""),
        (search.key_text, "a\x00b"),
        (search.key_text, "line\nbreak"),
        (search.key_text, "k" * 257),
        (search.event_id_text, ""),
        (search.event_id_text, "e" * 129),
        (search.event_id_text, "id with spaces"),
        (search.event_id_text, "é"),
        (search.event_type_text, "order created"),
        (search.event_type_text, "t" * 65),
        (search.event_type_text, "<script>"),
        (search.header_pair, "no-equals"),
        (search.header_pair, "=value"),
        (search.header_pair, "bad name=v"),
        (search.header_pair, "ce_id=" + "v" * 257),
        (search.header_pair, "ce_id=a\x00"),
        (search.limit_number, "0"),
        (search.limit_number, "1001"),
        (search.limit_number, "ten"),
        (search.limit_number, "9" * 5000),
        (search.topic_text, "../etc"),
        (search.topic_text, ""),
    ],
)
def test_a_hostile_value_is_refused_with_a_short_reason(check: object, text: str) -> None:
    assert callable(check)
    with pytest.raises(ValueError) as refused:
        check(text)
    assert len(str(refused.value)) < 200, "the refusal does not echo a flood"


def test_the_good_values_pass() -> None:
    assert search.key_text("order-1") == "order-1"
    assert search.event_id_text("0b5f0a9e-6a0c-4c1b-9f3e-1f2d3c4b5a69")
    assert search.event_type_text("order-created") == "order-created"
    assert search.header_pair("ce_source=/services/order") == ("ce_source", "/services/order")
    assert search.header_pair("x-empty=") == ("x-empty", "")
    assert search.limit_number("1000") == 1000


def test_one_reader_of_times_for_every_command() -> None:
    assert times.moment("2026-01-02T03:04:05+02:00") == datetime(2026, 1, 2, 1, 4, 5, tzinfo=UTC)
    soon = (utcnow() + timedelta(hours=1)).isoformat()
    with pytest.raises(ValueError, match="in the future"):
        times.moment(soon)
    assert times.moment(soon, future=True) > utcnow()
    for bad in (
        "2026-01-02T03:04:05",
        "x" * 10_000,
        "2026-01-02T03:04:05Z\x00",
        "1969-01-01T00:00:00Z",
    ):
        with pytest.raises(ValueError) as refused:
            times.moment(bad)
        assert len(str(refused.value)) < 200


@pytest.mark.parametrize(
    "argv",
    [
        ["--key", "a\x00b"],
        ["--key", "k" * 5000],
        ["--id", "x" * 200],
        ["--type", "order created"],
        ["--header", "no-equals"],
        ["--header", "ce_id=" + "v" * 1000],
        ["--limit", "0"],
        ["--limit", "1000001"],
        ["--until", "2026-13-01T00:00:00Z"],
        ["--until", "2026-01-01T00:00:00"],
        ["--order", "x", "--key", "y"],
        ["--until", "2026-01-01T00:00:00Z", "--follow"],
        ["--since", "2026-01-02T00:00:00Z", "--until", "2026-01-01T00:00:00Z"],
    ],
    ids=lambda argv: argv[0] + ("+" + argv[2] if len(argv) > 2 else ""),
)
def test_tail_refuses_a_hostile_search_before_asking_the_broker(
    argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    monkeypatch.setattr(tail, "reader", lambda *a, **k: pytest.fail("the broker was asked"))
    with pytest.raises(SystemExit) as ended:
        tail.main(argv)
    assert ended.value.code == 2
    assert len(capsys.readouterr().err) < 3000, "the refusal does not echo a flood"
