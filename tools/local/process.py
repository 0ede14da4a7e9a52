"""A background process of the local stack, handled in one place: the broker and the
cluster's nodes, Zipkin, HAProxy, the services, the explorer and dockerd all use it.

    process = ManagedProcess("zipkin", home / "zipkin.pid", home / "zipkin.log", marker=[jar])
    process.start(["java", "-jar", jar], env=env, cwd=home)
    process.wait_until(answers, timeout=90)      # RuntimeError with the log's tail if it dies
    process.stop(timeout=20, ports=[9411])       # SIGTERM, SIGKILL to its group after 20 s

A process starts in a session (so a process group) of its own, its output appended to its
log, its pid in its pid file. The pid file is believed only while that pid is a live
process (not a zombie) whose command line holds every argument of `marker`: a stale pid
file, reused by another program, or a forged one is never signalled. Standard library
only: the services' image runs the explorer, which imports it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

POLL = 0.05
"""Seconds between two looks at a process or a port."""
KILL_WAIT = 10.0
"""Seconds a SIGKILLed process gets to vanish, and its ports to close."""
PID_MAX = 2**22
"""Linux's largest pid (pid_max's ceiling): anything else in a pid file is garbage."""


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_ports_free(ports: Iterable[int], timeout: float, host: str = "127.0.0.1") -> None:
    """Until nothing listens on `ports`; TimeoutError naming the ones still open."""
    deadline = time.monotonic() + timeout
    while taken := [port for port in ports if port_open(host, port)]:
        if time.monotonic() >= deadline:
            raise TimeoutError(f"port(s) {taken} still open after {timeout:.0f}s")
        time.sleep(POLL)


def tail(path: Path, lines: int = 30) -> str:
    """The last `lines` lines of a log, or `(no log)`."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def read_pid(path: Path) -> int | None:
    """The pid a pid file holds, or None when it holds anything else (a pid of 0 or -1
    would signal a whole group, or every process)."""
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if 1 < pid <= PID_MAX else None


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name: state, parent pid, ...; None without it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def alive(pid: int, marker: Sequence[str] = ()) -> bool:
    """`pid` is a live process, not a zombie, whose command line holds every argument of
    `marker`. Without procfs (macOS) only that some process has the pid."""
    if Path("/proc/self").is_dir():
        stat = _stat(pid)
        if stat is None or stat[0] in ("Z", "X"):
            return False
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            return False
        return all(argument in argv for argument in marker)
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def parent(pid: int) -> int | None:
    """The parent's pid of `pid`, or None when it is gone (or unknown: no procfs)."""
    stat = _stat(pid)
    try:
        return int(stat[1]) if stat else None
    except ValueError:
        return None


class ManagedProcess:
    """One background process with its pid file and log (see the module's docstring).
    `name` says which in messages; `marker` is what its command line holds; `log_lines`
    how much of its log an error quotes."""

    def __init__(
        self,
        name: str,
        pid_file: Path,
        log_file: Path,
        marker: Sequence[str] = (),
        log_lines: int = 30,
    ) -> None:
        self.name = name
        self.pid_file = pid_file
        self.log_file = log_file
        self.marker = tuple(marker)
        self.log_lines = log_lines
        self._child: subprocess.Popen[bytes] | None = None

    def pid(self) -> int | None:
        """The pid of the pid file while that is this process, alive; else None."""
        pid = read_pid(self.pid_file)
        if pid is None:
            return None
        if self._child is not None and self._child.pid == pid:
            # our own child, reaped once it exits (no zombie); its command line can read
            # empty while it starts or exits, so it is not what tells
            return pid if self._child.poll() is None else None
        return pid if alive(pid, self.marker) else None

    def owns(self, pid: int) -> bool:
        """Whether `pid` is this process or one of its children (a uvicorn worker)."""
        started = self.pid()
        return started is not None and started in (pid, parent(pid))

    def start(
        self,
        command: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        banner: str = "",
    ) -> int:
        """Start `command` in a session of its own, its output appended to the log (after
        `banner`), and record its pid. The caller checks first that it is not running."""
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            if banner:
                log.write(f"=== {banner} at {time.ctime()} ===\n".encode())
                log.flush()
            self._child = subprocess.Popen(
                list(command),
                env=None if env is None else dict(env),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid_file.write_text(f"{self._child.pid}\n")
        return self._child.pid

    def send(self, sig: signal.Signals, group: bool = False) -> int | None:
        """`sig` to the process (to its whole group with `group`) if it runs; its pid."""
        pid = self.pid()
        if pid is not None:
            _signal(pid, sig, group)
        return pid

    def stop(
        self, timeout: float = 30, sig: signal.Signals = signal.SIGTERM, ports: Iterable[int] = ()
    ) -> None:
        """`sig` to the process alone (it tells its children, as uvicorn's supervisor
        does its workers), up to `timeout` s for it to exit, then SIGKILL to its whole
        group; then until `ports` are free. The pid file goes."""
        pid = self.send(sig)
        if pid is not None and not self._gone(pid, timeout):
            _signal(pid, signal.SIGKILL, group=True)
            self._gone(pid, KILL_WAIT)
        self._finish(pid, ports)

    def kill(self, ports: Iterable[int] = ()) -> None:
        """SIGKILL to its whole group at once, as a crash would; then until `ports` are
        free. The pid file goes."""
        pid = self.send(signal.SIGKILL, group=True)
        if pid is not None:
            self._gone(pid, KILL_WAIT)
        self._finish(pid, ports)

    def _finish(self, pid: int | None, ports: Iterable[int]) -> None:
        self.pid_file.unlink(missing_ok=True)
        if pid is not None:
            _kill_leftovers(pid)
            wait_ports_free(ports, KILL_WAIT)

    def _gone(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.pid() == pid:
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL)
        return True

    def exit_code(self) -> int | None:
        """The exit code of the process this object started, once it has exited."""
        return None if self._child is None else self._child.poll()

    def tail(self, lines: int | None = None) -> str:
        return tail(self.log_file, lines or self.log_lines)

    def wait_until(
        self, check: Callable[[], bool], timeout: float, what: str = "ready", every: float = 0.2
    ) -> None:
        """Poll `check` until it is true: RuntimeError with the log's tail if the process
        exits first, TimeoutError with it after `timeout` s."""
        deadline = time.monotonic() + timeout
        while not check():
            if self.pid() is None:
                self.pid_file.unlink(missing_ok=True)
                code = self.exit_code()
                exited = "exited" if code is None else f"exited with code {code}"
                raise RuntimeError(
                    f"{self.name} {exited}; {self.log_file} ends with:\n{self.tail()}"
                )
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{self.name} not {what} after {timeout:.0f}s; {self.log_file} ends with:\n"
                    + self.tail()
                )
            time.sleep(every)

    def wait_for_port(self, host: str, port: int, timeout: float) -> None:
        """Until the process accepts connections on host:port (see `wait_until`)."""
        self.wait_until(lambda: port_open(host, port), timeout, f"listening on :{port}", POLL)


class RunsAProcess:
    """What a local server shows of its one process (`self.process`): the pid while it
    runs, the pid file, the log."""

    process: ManagedProcess

    def pid(self) -> int | None:
        return self.process.pid()

    @property
    def pid_file(self) -> Path:
        return self.process.pid_file

    @property
    def log_file(self) -> Path:
        return self.process.log_file


class LocalServer(Protocol):
    """What the command line of one local server (the broker, Zipkin) drives."""

    def start(self, timeout: float = ...) -> None: ...
    def stop(self, timeout: float = ...) -> None: ...
    def kill(self) -> None: ...
    def pid(self) -> int | None: ...


SERVER_COMMANDS = ("start", "stop", "kill", "status")


def server_command(
    command: str, server: LocalServer, where: str, timeout: float | None = None
) -> int:
    """`command` (one of SERVER_COMMANDS) on `server` (`start` and `stop` within
    `timeout` when given), said in a line with `where` it serves; the exit code: 3 for
    the status of a server that is down."""
    began = time.monotonic()
    if command in ("start", "stop"):
        action = getattr(server, command)
        action() if timeout is None else action(timeout)
    elif command == "kill":
        server.kill()
    pid = server.pid()
    took = f" in {time.monotonic() - began:.1f}s" if command != "status" else ""
    print(f"{where}: " + (f"running, pid {pid}" if pid else "down") + took)
    return 3 if command == "status" and pid is None else 0


def _signal(pid: int, sig: signal.Signals, group: bool) -> None:
    """`sig` to `pid`, or to the group it leads (only a group it leads)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group and os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def _kill_leftovers(pid: int) -> None:
    """SIGKILL to what is left of the group `pid` led, once it has exited (it may still be
    on its way out: its command line reads empty then): unless the pid is in use again (a
    new process leading a group of its own is none of ours)."""
    deadline = time.monotonic() + KILL_WAIT
    while (stat := _stat(pid)) is not None and stat[0] not in ("Z", "X"):
        if time.monotonic() >= deadline:
            return
        time.sleep(POLL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
