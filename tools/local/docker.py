"""A Docker engine and the compose v2 plugin on a machine that has neither.

    python -m tools.local.docker engine {start,stop,status}
    python -m tools.local.docker compose {install,status}

`engine start` does nothing when an engine already answers. Otherwise, where the machine
allows it (root, Debian, apt-get), it installs Debian's `docker.io` if `dockerd` is missing
and starts `dockerd` with no firewall rules of its own (`--iptables=false
--ip6tables=false --ip-forward=false`): containers reach each other and the ports they
publish on 127.0.0.1, and nothing outside this machine. The engine listens on Docker's
default socket, so every client (the docker CLI, compose, testcontainers) finds it without
`DOCKER_HOST`, and keeps Docker's default data root, so the image cache outlives it. Its pid
file and log are under .run/docker of the checkout that started it: `engine stop` (and
`make down`) stops that engine and never one that something else started.

`compose install` builds the compose plugin from its Go module once (about 5 minutes of CPU)
into the docker CLI's plugin folder (`$DOCKER_CONFIG/cli-plugins`, default
~/.docker/cli-plugins); it does nothing when `docker compose` already answers.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tools.local import gomod
from tools.local.process import ManagedProcess, alive

ROOT = Path(__file__).resolve().parents[2]
STATE_DIR = ROOT / ".run" / "docker"
PID_FILE = STATE_DIR / "engine.pid"
"""The pid of the dockerd this checkout started: what `engine stop` stops."""
DOCKERD_PID_FILE = STATE_DIR / "dockerd.pid"
"""dockerd's own pid file (it refuses to start while that names a live process)."""
LOG_FILE = STATE_DIR / "dockerd.log"
DEFAULT_SOCKET = Path("/var/run/docker.sock")

COMPOSE_MODULE = "github.com/docker/compose/v5"
# The newest release that builds with this machine kind's Go (a newer one needs a newer Go).
COMPOSE_VERSION = "v5.6.0"


def _run(
    cmd: list[str], timeout: float | None = None, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)  # type: ignore[call-overload,no-any-return]


def plugin_dir() -> Path:
    """The docker CLI's own plugin folder for this user."""
    config = os.environ.get("DOCKER_CONFIG")
    return (Path(config) if config else Path.home() / ".docker") / "cli-plugins"


def compose_version() -> str | None:
    """The version of the compose plugin the docker CLI runs, or None without one."""
    if shutil.which("docker") is None:
        return None
    try:
        done = _run(["docker", "compose", "version", "--short"], timeout=30)
    except subprocess.TimeoutExpired:
        return None
    version = done.stdout.strip()
    return version if done.returncode == 0 and version else None


def install_compose() -> str:
    """Build the compose plugin from its Go module unless `docker compose` answers."""
    version = compose_version()
    if version is not None:
        print(f"compose {version} is installed", flush=True)
        return version
    if shutil.which("docker") is None:
        raise RuntimeError("no docker CLI on PATH: the compose plugin runs under it")
    target = plugin_dir() / "docker-compose"
    print(f"building compose {COMPOSE_VERSION} from its Go module (minutes)...", flush=True)
    ldflags = f"-X {COMPOSE_MODULE}/internal.Version={COMPOSE_VERSION}"
    seconds = gomod.build(COMPOSE_MODULE, COMPOSE_VERSION, "./cmd", target, ldflags)
    version = compose_version()
    if version is None:
        raise RuntimeError(f"{target} was built but `docker compose version` does not answer")
    print(f"compose {version} built in {seconds:.0f}s: {target}", flush=True)
    return version


# --- the engine ----------------------------------------------------------------------------


def engine_version(timeout: float = 15) -> str | None:
    """The server version of the engine the docker CLI reaches, or None if none answers."""
    if shutil.which("docker") is None:
        return None
    try:
        done = _run(["docker", "version", "--format", "{{.Server.Version}}"], timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    version = done.stdout.strip()
    return version if done.returncode == 0 and version else None


def engine() -> ManagedProcess:
    """The dockerd this checkout starts: its command line names its own pid file."""
    return ManagedProcess(
        "dockerd", PID_FILE, LOG_FILE, marker=("--pidfile", str(DOCKERD_PID_FILE))
    )


def started_engine() -> int | None:
    """The pid of the dockerd this checkout started, if it still runs."""
    return engine().pid()


def _other_dockerd() -> int | None:
    """A dockerd that this checkout did not start (another checkout's, or the system's)."""
    ours = started_engine()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != ours:
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "dockerd":
                    return int(entry.name)
    return None


def _can_start_engine() -> str | None:
    """Why this machine can't start an engine here, or None if it can."""
    if os.geteuid() != 0:
        return "starting dockerd needs root"
    if not Path("/etc/debian_version").is_file() or shutil.which("apt-get") is None:
        return "dockerd is installed from Debian's packages: this is not Debian"
    host = os.environ.get("DOCKER_HOST", "")
    if host and host != f"unix://{DEFAULT_SOCKET}":
        return f"DOCKER_HOST={host} does not answer (an engine started here uses the default)"
    return None


def _install_dockerd() -> str:
    """Debian's docker.io (dockerd, containerd, runc), installed if dockerd is missing."""
    dockerd = shutil.which("dockerd")
    if dockerd is not None:
        return dockerd
    print("installing Debian's docker.io...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "docker.io"],
    ):
        done = _run(cmd, env=env, timeout=900)
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
            )
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise RuntimeError("docker.io is installed but dockerd is not on PATH")
    return dockerd


def start_engine(timeout: float = 90) -> str:
    """Make an engine answer: the one that does, or a dockerd started here. Its version."""
    version = engine_version()
    if version is not None:
        owner = "this checkout" if started_engine() else "something else"
        print(f"docker engine {version} answers (started by {owner})", flush=True)
        return version
    deadline = time.monotonic() + timeout
    other = _other_dockerd()
    if other is not None:  # starting up (or stuck): wait for it rather than start a second
        print(f"waiting for the dockerd that runs already (pid {other})", flush=True)
        while (version := engine_version(timeout=5)) is None:
            if not alive(other):
                raise RuntimeError(f"the dockerd already running (pid {other}) exited")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no Docker engine answers after {timeout:.0f}s")
            time.sleep(0.5)
    else:
        reason = _can_start_engine()
        if reason is not None:
            raise RuntimeError(f"no Docker engine answers, and none can be started: {reason}")
        process = _spawn_dockerd(_install_dockerd())
        answer: list[str] = []
        process.wait_until(lambda: _answers(answer), timeout, "answering", every=0.5)
        version = answer[0]
    print(f"docker engine {version} answers", flush=True)
    return version


def _answers(version: list[str]) -> bool:
    """Whether an engine answers; its version appended to `version` when one does."""
    found = engine_version(timeout=5)
    if found is not None:
        version.append(found)
    return found is not None


def _spawn_dockerd(dockerd: str) -> ManagedProcess:
    """Start dockerd in the background, its pid file and log under .run/docker."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    # No firewall rules and no forwarding: containers reach each other (bridge) and the host
    # reaches their published ports (docker-proxy on 127.0.0.1); nothing else.
    cmd = [dockerd, "--iptables=false", "--ip6tables=false", "--ip-forward=false"]
    cmd += ["--pidfile", str(DOCKERD_PID_FILE), "-H", f"unix://{DEFAULT_SOCKET}"]
    process = engine()
    pid = process.start(cmd)
    print(f"started dockerd (pid {pid}, log {LOG_FILE})", flush=True)
    return process


def stop_engine(timeout: float = 60) -> bool:
    """Stop the dockerd this checkout started (it stops its containers first). True if it ran."""
    process = engine()
    pid = process.pid()
    process.stop(timeout)  # drops a stale pid file too
    if pid is None:
        return False
    print(f"stopped dockerd (pid {pid})", flush=True)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.local.docker", description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    engine = sub.add_parser("engine")
    engine.add_argument("command", choices=["start", "stop", "status"])
    engine.add_argument("--quiet", action="store_true", help="stop: say nothing if none ran")
    sub.add_parser("compose").add_argument("command", choices=["install", "status"])
    args = parser.parse_args(argv)
    if args.what == "engine":
        if args.command == "start":
            start_engine()
        elif args.command == "stop":
            if not stop_engine() and not args.quiet:
                print("no engine started by this checkout runs")
        else:
            version = engine_version()
            pid = started_engine()
            owner = (
                f"started by this checkout, pid {pid}" if pid else "not started by this checkout"
            )
            print(
                f"docker engine {version} ({owner})" if version else "docker engine: none answers"
            )
            return 0 if version else 3
        return 0
    if args.what == "compose":
        if args.command == "install":
            install_compose()
            return 0
        version = compose_version()
        print(f"compose {version}" if version else "compose: not installed")
        return 0 if version else 3
    return 2


if __name__ == "__main__":
    sys.exit(main())
