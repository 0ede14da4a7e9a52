"""`python -m tools.ops.offsets` without a broker: the plan each move makes of what the
broker reports, and every command-line value refused before anything is asked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.clock import utcnow
from tools.ops import offsets
from tools.ops.offsets import Move, Partition, Step, plan, table

pytestmark = pytest.mark.unit

AT_7 = Partition("orders", 0, committed=7, low=2, high=10, at_time=4)
NEVER = Partition("orders", 1, committed=None, low=3, high=10)


@pytest.mark.parametrize(
    ("move", "new", "note"),
    [
        (Move("earliest"), 2, ""),
        (Move("latest"), 10, ""),
        (Move("datetime", when=utcnow()), 4, ""),
        (Move("shift", shift=-3), 4, ""),
        (Move("shift", shift=2), 9, ""),
        (Move("shift", shift=-6), 2, "1 is before the earliest record: clamped to the earliest"),
        (Move("shift", shift=50), 10, "57 is past the end: clamped to the latest"),
    ],
)
def test_each_move_plans_its_offset_and_the_lag_it_leaves(move: Move, new: int, note: str) -> None:
    assert plan([AT_7], move) == [Step("orders", 0, 7, new, 10 - new, note)]


def test_a_time_with_no_record_since_moves_to_the_end() -> None:
    late = Partition("orders", 0, committed=7, low=2, high=10, at_time=None)
    (step,) = plan([late], Move("datetime", when=utcnow()))
    assert (step.new, step.lag, step.note) == (10, 0, "no record since then: the end")


def test_a_partition_without_a_committed_offset_shifts_from_the_earliest() -> None:
    (step,) = plan([NEVER], Move("shift", shift=2))
    assert (step.current, step.new, step.note) == (
        None,
        5,
        "no committed offset: shifted from the earliest",
    )


def test_the_plan_is_a_table_in_partition_order() -> None:
    steps = plan([NEVER, AT_7], Move("earliest"))
    assert table(steps).splitlines() == [
        "TOPIC   PARTITION  FROM  TO  LAG",
        "orders  0          7     2   8",
        "orders  1          -     3   7",
    ]


def refusal(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        offsets.parser().parse_args(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["g", "--to-datetime", "tomorrow"], "not an RFC 3339 time"),
        (["g", "--to-datetime", "2026-12-07T06:00:00"], "give the time's zone"),
        (["g", "--to-datetime", "1969-12-31T23:00:00Z"], "is before 1970"),
        (["g", "--to-datetime", "2026-12-07T06:00:00Z\x00"], "not an RFC 3339 time"),
        (["g", "--shift-by", "1.5"], "not a whole number of records"),
        (["g", "--shift-by", str(2**64)], "a shift is at most"),
        (["g", "--to-earliest", "--topic", "a" * 250], "not a topic name"),
        (["g", "--to-earliest", "--topic", "orders\x00"], "not a topic name"),
        (["g", "--to-earliest", "--topic", "../x"], "not a topic name"),
        (["", "--to-earliest"], "a group id is 1 to 255 printable characters"),
        (["g" * 256, "--to-earliest"], "a group id is 1 to 255 printable characters"),
        (["order\x00", "--to-earliest"], "a group id is 1 to 255 printable characters"),
        (["order\n", "--to-earliest"], "a group id is 1 to 255 printable characters"),
        (["g", "--to-earliest", "--timeout", "nan"], "not a number of seconds"),
        (["g", "--to-earliest", "--timeout", "-1"], "not a number of seconds"),
        (["g", "--to-earliest", "--to-latest"], "not allowed with argument"),
        (["g"], "one of the arguments"),
    ],
)
def test_a_bad_value_is_refused_before_the_broker_is_asked(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert said in refusal(argv, capsys)


def test_a_time_in_the_future_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    soon = (utcnow() + timedelta(minutes=1)).isoformat()
    assert "is in the future" in refusal(["g", "--to-datetime", soon], capsys)


def test_a_time_in_any_zone_is_read_as_that_instant() -> None:
    args = offsets.parser().parse_args(["g", "--to-datetime", "2026-01-02T03:04:05+02:00"])
    assert offsets.chosen_move(args) == Move(
        "datetime", when=datetime(2026, 1, 2, 1, 4, 5, tzinfo=UTC)
    )


@pytest.mark.parametrize(
    ("group", "prefix", "who"),
    [("product", "", "product"), ("t.order", "t.", "order"), ("t.order", "", "admin")]
    + [("observer-x", "", "admin"), ("redrive-1", "", "admin")],
)
def test_a_services_group_is_moved_as_that_service_any_other_as_the_admin(
    group: str, prefix: str, who: str
) -> None:
    assert offsets.principal(group, prefix) == who
