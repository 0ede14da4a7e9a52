"""Serve the event explorer on 127.0.0.1 (`make up` starts it too)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import uvicorn
from pydantic import ValidationError

from shared.runtime.protocol import BoundedHttpToolsProtocol
from tools.local.certs import OBSERVER, REDRIVE
from tools.local.cluster import sign_in_locally
from tools.ops.explorer.app import create_app
from tools.ops.explorer.config import ExplorerSettings


def main(argv: list[str] | None = None) -> None:
    sign_in_locally(OBSERVER)
    signed_in = os.environ.get("KAFKA_SASL_PASSWORD_FILE")
    if signed_in and os.environ.get("KAFKA_SASL_USERNAME") == OBSERVER:
        redrive = Path(signed_in).with_name(REDRIVE)  # beside it, as tools/local/certs keeps them
        if redrive.is_file():
            os.environ.setdefault("EXPLORER_REDRIVE_PASSWORD_FILE", str(redrive))
    try:
        defaults = ExplorerSettings()
    except ValidationError as exc:  # a setting from the environment it cannot use
        raise SystemExit(f"python -m tools.ops.explorer: {exc}") from None
    parser = argparse.ArgumentParser(prog="python -m tools.ops.explorer", description=__doc__)
    parser.add_argument("--port", type=int, default=defaults.port)
    parser.add_argument(
        "--host", default=defaults.host, help="default 127.0.0.1 (0.0.0.0 in a container)"
    )
    parser.add_argument("--bootstrap", default=defaults.kafka_bootstrap_servers)
    parser.add_argument("--topic-prefix", default=defaults.topic_prefix)
    args = parser.parse_args(argv)
    settings = defaults.model_copy(
        update={
            "port": args.port,
            "host": args.host,
            "kafka_bootstrap_servers": args.bootstrap,
            "topic_prefix": args.topic_prefix,
        }
    )
    print(f"event explorer on http://{settings.host}:{settings.port}", flush=True)
    # as the services serve (shared.runtime.app.serve): request heads bounded, no proxy
    # headers; its page holds a Server-Sent Events stream open: stop waiting after 2 s
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        access_log=False,
        proxy_headers=False,
        http=BoundedHttpToolsProtocol,
        timeout_graceful_shutdown=2,
    )


if __name__ == "__main__":
    main()
