"""tools.local.process, the one place a local process is started, judged alive and stopped,
on small Python children: a pid file is believed only for a live process of ours, a stop
reaches the whole process group and waits for the ports, a wait ends with the log's tail
when the process dies."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tools.local.process import ManagedProcess, alive, parent, port_open, read_pid

pytestmark = pytest.mark.unit

MARKER = ("unit-test-child", "--port")
SLEEP = "import time; time.sleep(60)"


def child(code: str, *args: str) -> list[str]:
    """A Python child running `code`, its command line holding `args` (a marker)."""
    return [sys.executable, "-c", textwrap.dedent(code), *args]


@pytest.fixture
def process(tmp_path: Path) -> Iterator[ManagedProcess]:
    managed = ManagedProcess("child", tmp_path / "child.pid", tmp_path / "child.log", MARKER)
    yield managed
    managed.kill()


def gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def stranger() -> Iterator[subprocess.Popen[bytes]]:
    """A process that is none of ours: its command line lacks the marker."""
    other = subprocess.Popen(child(SLEEP))
    yield other
    other.kill()
    other.wait()


def test_a_started_process_is_ours_until_it_stops(process: ManagedProcess) -> None:
    pid = process.start(child(SLEEP, *MARKER))
    assert process.pid() == pid == read_pid(process.pid_file)
    process.stop(timeout=10)
    assert process.pid() is None and not process.pid_file.exists()
    assert gone(pid)


@pytest.mark.parametrize("content", ["", "garbage", "0", "-1", "1", "1" * 40, "4194305", "\0"])
def test_a_pid_file_holding_no_pid_names_no_process(process: ManagedProcess, content: str) -> None:
    """0 or -1 would signal a whole group or every process; 1 is init."""
    process.pid_file.write_text(content)
    assert process.pid() is None
    process.stop(timeout=1)
    process.kill()
    assert not process.pid_file.exists(), "a stale record is dropped"


def test_a_stale_or_forged_pid_file_never_signals_another_program(
    process: ManagedProcess, stranger: subprocess.Popen[bytes]
) -> None:
    process.pid_file.write_text(f"{stranger.pid}\n")
    assert process.pid() is None
    assert process.send(signal.SIGTERM) is None
    process.stop(timeout=1)
    process.kill()
    assert stranger.poll() is None, "the other program was signalled"
    assert not process.owns(stranger.pid)


def test_kill_reaches_the_whole_process_group(process: ManagedProcess) -> None:
    code = """
        import subprocess, sys, time
        worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print(worker.pid, flush=True)
        time.sleep(60)
    """
    pid = process.start(child(code, *MARKER))
    worker = int(wait_for_line(process.log_file))
    assert process.owns(worker) and process.owns(pid) and parent(worker) == pid
    process.kill()
    assert gone(pid) and gone(worker)


def test_a_graceful_stop_leaves_nothing_of_the_group_behind(process: ManagedProcess) -> None:
    """The process exits on SIGTERM at once, its child would live on: it goes too."""
    code = """
        import signal, subprocess, sys, time
        worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        print(worker.pid, flush=True)
        time.sleep(60)
    """
    pid = process.start(child(code, *MARKER))
    worker = int(wait_for_line(process.log_file))
    process.stop(timeout=10)
    assert gone(pid) and gone(worker)


def test_stop_waits_for_sigkill_when_sigterm_is_ignored_and_for_the_port(
    process: ManagedProcess,
) -> None:
    port = free_port()
    code = f"""
        import signal, socket, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        server = socket.socket()
        server.bind(("127.0.0.1", {port}))
        server.listen()
        time.sleep(60)
    """
    pid = process.start(child(code, *MARKER))
    process.wait_for_port("127.0.0.1", port, timeout=30)
    process.stop(timeout=0.5, ports=[port])
    assert gone(pid, timeout=0) and not port_open("127.0.0.1", port)


def test_a_wait_ends_with_the_log_when_the_process_dies(process: ManagedProcess) -> None:
    process.start(child("import sys; print('cannot start: no config'); sys.exit(3)", *MARKER))
    with pytest.raises(RuntimeError, match="(?s)child exited with code 3.*no config"):
        process.wait_until(lambda: False, timeout=30)
    assert not process.pid_file.exists()


def test_a_wait_times_out_with_the_log(process: ManagedProcess) -> None:
    process.start(child("print('still starting', flush=True); " + SLEEP, *MARKER))
    wait_for_line(process.log_file)
    with pytest.raises(TimeoutError, match="(?s)not ready after 0s.*still starting"):
        process.wait_until(lambda: False, timeout=0.2)
    assert process.pid() is not None, "a slow process is not stopped by the wait"


def wait_for_line(path: Path, timeout: float = 30) -> str:
    """The first line a child wrote to its log."""
    deadline = time.monotonic() + timeout
    while not (text := path.read_text() if path.exists() else "").endswith("\n"):
        assert time.monotonic() < deadline, f"nothing in {path}"
        time.sleep(0.02)
    return text.splitlines()[0]


def test_port_open_tells_a_listener_from_a_closed_port() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert port_open("127.0.0.1", server.getsockname()[1])
    assert not port_open("127.0.0.1", free_port())


def test_this_process_is_alive_and_a_reaped_one_is_not() -> None:
    assert alive(os.getpid())
    done = subprocess.Popen(child("pass"))
    done.wait()
    assert not alive(done.pid)


def test_a_new_kraft_cluster_id_never_starts_with_a_dash() -> None:
    """kafka-storage's parser reads `-t -xyz...` as a missing id; one id in 64 began so."""
    from tools.local.kafka import new_cluster_id

    ids = [new_cluster_id() for _ in range(2_000)]
    assert not [cluster_id for cluster_id in ids if cluster_id.startswith("-")]
    assert all(len(cluster_id) == 22 for cluster_id in ids)
