"""Build a program from a Go module, as published on the Go module proxy.

The module's source comes out of the module cache and is built as the main module, so its
go.mod's `replace` and `exclude` lines apply as they do for its own release builds (`go
install pkg@version` refuses a module that has them). Needs the `go` command; the module
cache and Go's build cache make a second build of the same version quick.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path


def build(module: str, version: str, package: str, output: Path, ldflags: str = "") -> float:
    """Build `package` (relative to the module, like ./cmd) of module@version into `output`.

    The binary appears at `output` only once it is complete. Returns the seconds it took."""
    go = shutil.which("go")
    if go is None:
        raise RuntimeError(f"no Go toolchain on PATH: {module} builds from its Go module")
    started = time.monotonic()
    output = output.resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false"}
    with tempfile.TemporaryDirectory(prefix="gomod-build-") as build_dir:
        done = subprocess.run(
            [go, "mod", "download", "-json", f"{module}@{version}"],
            cwd=build_dir,
            env=env,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"go mod download {module}@{version} failed:\n{done.stdout}{done.stderr}"
            )
        source = Path(build_dir) / "src"
        shutil.copytree(json.loads(done.stdout)["Dir"], source)
        for path in source.rglob("*"):  # the module cache is read-only
            path.chmod(0o755 if path.is_dir() else 0o644)
        partial = output.with_name(f".{output.name}.partial")
        cmd = [go, "build", "-trimpath", "-ldflags", f"-s -w {ldflags}".strip(), "-o", str(partial)]
        done = subprocess.run([*cmd, package], cwd=source, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            partial.unlink(missing_ok=True)
            raise RuntimeError(
                f"go build of {module}@{version} {package} failed:\n{done.stderr[-4000:]}"
            )
        partial.chmod(0o755)
        partial.replace(output)
    return time.monotonic() - started
