"""python -m services NAME [--host HOST]: serve a registered service (the image's command).

It listens where the service's settings say (`<NAME>_HOST`, `<NAME>_PORT`); `--host
0.0.0.0` is how a container opens it to the network."""

from __future__ import annotations

import argparse

from services.registry import get, load, names
from shared.runtime.app import serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services", description=__doc__)
    parser.add_argument("name", choices=names())
    parser.add_argument("--host", help="the address to listen on instead of <NAME>_HOST")
    args = parser.parse_args(argv)
    service = get(args.name)
    overrides = {"host": args.host} if args.host else {}
    serve(load(service.app), load(service.settings)(**overrides))


if __name__ == "__main__":
    main()
