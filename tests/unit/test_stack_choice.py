"""Which of the three ways `make up` runs the stack (STACK, else the engine and the local
images), and that `make down` stops the way `up` ran."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

stack = importlib.import_module("tools.local.stack")


@pytest.mark.parametrize(
    ("engine", "built", "expected"),
    [(False, False, "processes"), (True, False, "compose"), (True, True, "compose-local")],
)
def test_without_stack_the_engine_and_the_local_images_choose(
    engine: bool, built: bool, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STACK", raising=False)
    monkeypatch.setattr(stack, "docker_engine", lambda: engine)
    monkeypatch.setattr(stack, "local_images_built", lambda: built)
    assert stack.chosen_stack(tmp_path, "up") == expected


@pytest.mark.parametrize("value", ["compose", "compose-local", "processes"])
def test_stack_wins_over_what_the_machine_has(
    value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STACK", value)
    monkeypatch.setattr(stack, "docker_engine", lambda: True)
    monkeypatch.setattr(stack, "local_images_built", lambda: True)
    assert stack.chosen_stack(tmp_path, "up") == value


@pytest.mark.parametrize("value", ["docker", "Compose", "compose;rm -rf /", "x" * 500])
def test_an_unknown_stack_is_refused_with_the_choices(
    value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(stack, "RUN_DIR", tmp_path)
    monkeypatch.setenv("STACK", value)
    calls: list[object] = []
    monkeypatch.setattr(stack.subprocess, "call", lambda *a, **k: calls.append(a) or 0)
    assert stack.main(["up"]) == 2
    assert "compose, compose-local, processes" in capsys.readouterr().err
    assert not calls and not (tmp_path / stack.STACK_FILE).exists()


def test_down_stops_the_way_up_ran_and_forgets_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stack, "RUN_DIR", tmp_path)
    monkeypatch.delenv("STACK", raising=False)
    monkeypatch.setattr(stack, "docker_engine", lambda: True)
    monkeypatch.setattr(stack, "local_images_built", lambda: True)
    commands: list[list[str]] = []
    monkeypatch.setattr(
        stack.subprocess, "call", lambda command, env: commands.append(command) or 0
    )
    assert stack.main(["up"]) == 0
    assert (tmp_path / stack.STACK_FILE).read_text().strip() == "compose-local"
    monkeypatch.setattr(stack, "local_images_built", lambda: False)  # changed since: still local
    assert stack.main(["down"]) == 0
    up, down = commands
    for command in (up, down):
        files = [command[i + 1] for i, arg in enumerate(command) if arg == "-f"]
        assert [Path(f).name for f in files] == ["compose.yaml", "compose.images.yaml"]
    assert down[-1] == "down"
    assert not (tmp_path / stack.STACK_FILE).exists()


def test_down_of_a_compose_stack_without_an_engine_stops_nothing_and_forgets_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stack, "RUN_DIR", tmp_path)
    monkeypatch.delenv("STACK", raising=False)
    (tmp_path / stack.STACK_FILE).write_text("compose\n")
    monkeypatch.setattr(stack, "docker_engine", lambda: False)
    monkeypatch.setattr(stack.subprocess, "call", lambda *a, **k: pytest.fail("ran compose"))
    assert stack.main(["down"]) == 0
    assert not (tmp_path / stack.STACK_FILE).exists()
