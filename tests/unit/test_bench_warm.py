"""The bench warms the stack until the brokers' JIT compilers are quiet: how it reads
their threads' CPU from /proc, and when it stops."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.bench.__main__ import JIT_QUIET, WARM_STEP, next_warm_step
from tools.bench.procs import jit_share, jit_ticks

pytestmark = pytest.mark.unit


def thread(proc: Path, pid: int, tid: int, name: str, utime: int, stime: int) -> None:
    task = proc / str(pid) / "task" / str(tid)
    task.mkdir(parents=True)
    (task / "comm").write_text(name + "\n")
    # pid (comm) state, then fields 4..; utime and stime are the 14th and 15th
    before = " ".join(["S", *["0"] * 10])
    (task / "stat").write_text(f"{tid} ({name}) {before} {utime} {stime} 0 0 20 0\n")


def test_compiler_threads_are_told_from_the_others_in_every_jvm(tmp_path: Path) -> None:
    thread(tmp_path, 10, 10, "java", 5, 5)
    thread(tmp_path, 10, 11, "C2 CompilerThre", 30, 10)
    thread(tmp_path, 10, 12, "C1 CompilerThre", 4, 0)
    thread(tmp_path, 20, 21, "data-plane-kafk", 50, 10)
    thread(tmp_path, 20, 22, "C2 CompilerThre", 7, 3)
    # a name with ") " in it must not shift the fields
    thread(tmp_path, 20, 23, "odd) name", 1, 1)

    assert jit_ticks([10, 20, 99], proc=tmp_path) == (54, 126)


def test_a_thread_that_ends_while_read_is_left_out(tmp_path: Path) -> None:
    thread(tmp_path, 10, 11, "C2 CompilerThre", 30, 10)
    (tmp_path / "10" / "task" / "12").mkdir()  # no comm, no stat: gone

    assert jit_ticks([10], proc=tmp_path) == (40, 40)


def test_the_share_is_of_what_the_jvms_spent_between_two_readings() -> None:
    assert jit_share((100, 1000), (130, 1300)) == pytest.approx(0.1)
    assert jit_share((100, 1000), (100, 1000)) == 0.0
    assert jit_share((100, 1000), (90, 1100)) == 0.0, "a compiler thread that ended"


@pytest.mark.parametrize(
    ("share", "spent", "limit", "expected"),
    [
        (0.40, 30, 180, WARM_STEP),
        (JIT_QUIET, 30, 180, 0.0),
        (0.01, 30, 180, 0.0),
        (0.40, 170, 180, 10.0),
        (0.40, 180, 180, 0.0),
        (0.40, 30, 30, 0.0),
    ],
)
def test_warming_goes_on_while_the_compilers_are_busy_and_the_limit_allows(
    share: float, spent: float, limit: float, expected: float
) -> None:
    assert next_warm_step(share, spent, limit) == expected
