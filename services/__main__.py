"""python -m services NAME [--host HOST] [--port PORT] [--workers N]: serve a registered
service. The one way to start a service: `make up`, the tests and the image all run it.

It listens where the service's settings say (`<NAME>_HOST`, `<NAME>_PORT`) unless `--host`
or `--port` says otherwise (`--host 0.0.0.0` is how a container opens it to the network).
`--workers N` runs N uvicorn worker processes; each builds the app from the environment
(where the address chosen here is exported as `<NAME>_HOST` and `<NAME>_PORT`), and they
count their metrics together in `PROMETHEUS_MULTIPROC_DIR` (a temporary folder unless it
names one). Every process bounds request heads and leaves `X-Forwarded-For` to the app
(shared.runtime.app.serve).

NAME may instead be an app factory outside the registry, `module:function` (the tests'
and the benchmark's bare apps, the crash tests' faulty service): served the same way, on
127.0.0.1 unless `--host` says otherwise; it has no settings to check or export."""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from services.registry import get, load, names
from shared.messaging import exporters
from shared.runtime.app import serve


def _name(text: str) -> str:
    if ":" in text or text in names():
        return text
    raise argparse.ArgumentTypeError(f"no service {text!r}; registered: {', '.join(names())}")


def _count(low: int, high: int) -> Callable[[str], int]:
    def count(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not in {low}..{high}")
        return value

    return count


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m services",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", type=_name, metavar="NAME", help=", ".join(names()))
    parser.add_argument("--host", help="the address to listen on instead of <NAME>_HOST")
    parser.add_argument("--port", type=_count(1, 65_535), help="instead of <NAME>_PORT")
    parser.add_argument("--workers", type=_count(1, 64), default=1, help="default 1")
    return parser


@contextmanager
def metrics_folder(workers: int) -> Iterator[None]:
    """Several workers count into one folder (prometheus_client's multiprocess mode):
    `PROMETHEUS_MULTIPROC_DIR` when set, else a temporary one for as long as they run."""
    if workers == 1 or os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="shop-metrics-") as folder:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
        try:
            yield
        finally:
            del os.environ["PROMETHEUS_MULTIPROC_DIR"]


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if ":" in args.name:
        app, host, port = args.name, args.host or "127.0.0.1", args.port
        if port is None:
            raise SystemExit("python -m services module:function needs --port")
    else:
        service = get(args.name)
        given = {"host": args.host, "port": args.port}
        # checked once here, before any worker starts, and handed to them all
        settings = load(service.settings)(**{k: v for k, v in given.items() if v is not None})
        try:
            exporters.check()  # OTEL_TRACES_SAMPLER(_ARG) and OTEL_TRACES_EXPORTER
        except ValueError as exc:
            raise SystemExit(f"python -m services {service.name}: {exc}") from None
        app, host, port = service.app, settings.host, settings.port
        os.environ[f"{service.name.upper()}_HOST"] = host
        os.environ[f"{service.name.upper()}_PORT"] = str(port)
    with metrics_folder(args.workers):
        serve(app, host=host, port=port, workers=args.workers)


if __name__ == "__main__":
    main()
