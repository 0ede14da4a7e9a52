"""tools.local.docker without an engine: which engine it would stop, where the compose plugin
goes, when it refuses to start dockerd. No process is started or signalled for real except
a sleeping child of this test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tools.local import docker

pytestmark = pytest.mark.unit


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(docker, "STATE_DIR", tmp_path)
    monkeypatch.setattr(docker, "PID_FILE", tmp_path / "engine.pid")
    monkeypatch.setattr(docker, "DOCKERD_PID_FILE", tmp_path / "dockerd.pid")
    monkeypatch.setattr(docker, "LOG_FILE", tmp_path / "dockerd.log")
    return tmp_path


@pytest.mark.parametrize("content", ["", "not a pid\n", "-1\n", "99999999\n", "1" * 40, "\0\n"])
def test_a_pid_file_naming_no_dockerd_is_no_engine_of_ours(state: Path, content: str) -> None:
    (state / "engine.pid").write_text(content)
    assert docker.started_engine() is None
    assert docker.stop_engine() is False
    assert not (state / "engine.pid").exists(), "a stale record is dropped"


def test_stop_never_signals_a_process_that_is_not_dockerd(state: Path) -> None:
    """A forged or stale pid file (the pid reused by another program) stops nothing."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (state / "engine.pid").write_text(f"{other.pid}\n")
        assert docker.started_engine() is None
        assert docker.stop_engine() is False
        assert other.poll() is None, "the other process was signalled"
    finally:
        other.kill()
        other.wait()


def test_the_compose_plugin_goes_where_the_docker_cli_looks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "config"))
    assert docker.plugin_dir() == tmp_path / "config" / "cli-plugins"
    monkeypatch.delenv("DOCKER_CONFIG")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert docker.plugin_dir() == tmp_path / ".docker" / "cli-plugins"


def test_an_engine_is_started_only_as_root_on_debian_for_the_default_socket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "root" in (docker._can_start_engine() or "")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    if not Path("/etc/debian_version").is_file():
        pytest.skip("not Debian")
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:2375")
    assert "DOCKER_HOST" in (docker._can_start_engine() or "")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{docker.DEFAULT_SOCKET}")
    if docker.shutil.which("apt-get"):
        assert docker._can_start_engine() is None


def test_the_engine_it_starts_adds_no_firewall_rules_and_forwards_nothing(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[list[str]] = []

    class Started:
        pid = 4242

    def popen(cmd: list[str], **_: object) -> Started:
        started.append(cmd)
        return Started()

    monkeypatch.setattr(docker.subprocess, "Popen", popen)
    assert docker._spawn_dockerd("/usr/sbin/dockerd").pid_file == state / "engine.pid"
    [cmd] = started
    assert {"--iptables=false", "--ip6tables=false", "--ip-forward=false"} <= set(cmd)
    assert cmd[cmd.index("-H") + 1] == f"unix://{docker.DEFAULT_SOCKET}"
    assert Path(cmd[cmd.index("--pidfile") + 1]).parent == state
    assert (state / "engine.pid").read_text().strip() == "4242"


def test_compose_is_built_from_a_version_this_go_builds() -> None:
    assert docker.COMPOSE_MODULE == "github.com/docker/compose/v5"
    assert docker.COMPOSE_VERSION.startswith("v5.")
