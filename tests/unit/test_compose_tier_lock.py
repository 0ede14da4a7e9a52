"""One compose-tier stack per engine (tests/compose/stack.py `exclusive`): a second run
waits for the first's lock instead of taking its stack down as leftovers."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from tests.compose import stack

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    return tmp_path / "docker"


def test_the_lock_lives_beside_the_docker_cli_configuration(docker_config: Path) -> None:
    with stack.exclusive(timeout=1):
        assert stack.lock_file() == docker_config / f"{stack.PROJECT}.lock"
        assert stack.lock_file().stat().st_mode & 0o077 == 0, "owner-only"
        assert str(os.getpid()) in stack.lock_file().read_text()


def test_a_second_run_waits_and_names_the_run_that_holds_the_stack() -> None:
    with stack.exclusive(timeout=1):
        with pytest.raises(TimeoutError, match=f"the run of pid {os.getpid()} held"):
            with stack.exclusive(timeout=0.3, every=0.05):
                pytest.fail("two runs held the stack at once")


def test_the_second_run_goes_on_once_the_first_lets_go() -> None:
    order: list[str] = []
    first_holds = threading.Event()
    release = threading.Event()

    def first() -> None:
        with stack.exclusive(timeout=1):
            order.append("first up")
            first_holds.set()
            release.wait(10)
            order.append("first down")

    thread = threading.Thread(target=first)
    thread.start()
    assert first_holds.wait(10)
    threading.Timer(0.3, release.set).start()
    with stack.exclusive(timeout=10, every=0.05):
        order.append("second up")
    thread.join(10)
    assert order == ["first up", "first down", "second up"]


def test_a_symlink_in_the_lock_s_place_is_not_followed(docker_config: Path) -> None:
    docker_config.mkdir(parents=True)
    target = docker_config / "elsewhere"
    target.write_text("keep me")
    stack.lock_file().symlink_to(target)
    with pytest.raises(OSError), stack.exclusive(timeout=1):
        pytest.fail("took a lock through a symlink")
    assert target.read_text() == "keep me"
