"""Command-line tools written in Go that development and CI use (Helm, kubeconform),
built once from the Go module proxy with `go install` and kept in a cache outside the
repository, one folder per tool and version; the next run finds them there.

    python -m tools.dev.gotools install helm kubeconform   # builds what is missing
    python -m tools.dev.gotools path helm                   # the cached binary, or exit 1

The cache is `$SHOP_TOOLS_CACHE`, else `$XDG_CACHE_HOME/event-driven-shop/go-tools`, else
`~/.cache/event-driven-shop/go-tools`. Building needs the `go` command (1.26 or newer, as
both modules declare); `GOTOOLCHAIN=local` keeps it from fetching another toolchain."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class GoTool:
    name: str
    package: str
    """The main package `go install` builds."""
    version: str

    @property
    def spec(self) -> str:
        return f"{self.package}@{self.version}"


TOOLS = {
    tool.name: tool
    for tool in (
        GoTool("helm", "helm.sh/helm/v4/cmd/helm", "v4.3.2"),
        GoTool("kubeconform", "github.com/yannh/kubeconform/cmd/kubeconform", "v0.8.0"),
    )
}


def cache_root() -> Path:
    if configured := os.environ.get("SHOP_TOOLS_CACHE"):
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "event-driven-shop" / "go-tools"


def binary(name: str) -> Path:
    """Where the tool's pinned version lives once built."""
    tool = TOOLS[name]
    return cache_root() / f"{tool.name}-{tool.version}" / tool.name


def find(name: str) -> Path | None:
    """The cached binary, or None when it has not been built yet."""
    path = binary(name)
    return path if path.is_file() and os.access(path, os.X_OK) else None


def go_command() -> str:
    found = shutil.which("go") or (
        "/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None
    )
    if found is None:
        raise RuntimeError("the `go` command is needed to build the tools (Go 1.26 or newer)")
    return found


def install(name: str) -> Path:
    """Build the tool unless it is cached; return its path. The build goes to a
    temporary folder first, so an interrupted one leaves no half-written binary."""
    if found := find(name):
        return found
    tool, target = TOOLS[name], binary(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as building:
        env = dict(os.environ, GOBIN=building, GOTOOLCHAIN="local", CGO_ENABLED="0")
        started = time.monotonic()
        print(f"building {tool.spec} (once; cached in {target.parent})", file=sys.stderr)
        subprocess.run([go_command(), "install", "-trimpath", tool.spec], env=env, check=True)
        os.replace(Path(building) / tool.name, target)
    print(f"built {tool.name} in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.dev.gotools", description=__doc__)
    parser.add_argument("command", choices=["install", "path"])
    parser.add_argument("tools", nargs="+", choices=sorted(TOOLS))
    args = parser.parse_args(argv)
    for name in args.tools:
        path = install(name) if args.command == "install" else find(name)
        if path is None:
            print(
                f"{name} is not built: python -m tools.dev.gotools install {name}", file=sys.stderr
            )
            return 1
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
