"""Write the event contracts kept in git, generated from the services' event models:

    python -m tools.dev.contracts            # write them (and remove contracts nobody publishes)
    python -m tools.dev.contracts --check    # exit 1, with a summary of what differs, if stale

`contracts/<topic>/<type>.json` is the JSON Schema of each event from its publisher's
model, `contracts/asyncapi.json` the AsyncAPI 3.0 document of the whole system and
`docs/events.md` its readable page. `tests/unit/test_contracts.py` fails when they are
stale, and checks every consumer's model against them."""

from __future__ import annotations

import argparse
import difflib
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from services import registry
from shared.messaging import asyncapi, contracts, eventdocs
from shared.runtime.service import ServiceSpec
from shared.runtime.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = "contracts"
ASYNCAPI = f"{CONTRACTS}/asyncapi.json"
PAGE = "docs/events.md"
TITLE = "Event-driven shop"


def specs() -> list[ServiceSpec]:
    """Every registered service's spec (its `main.py`'s `SPEC`)."""
    return [registry.load(f"{service.package}.main:SPEC") for service in registry.SERVICES]


def version(root: Path = ROOT) -> str:
    with (root / "pyproject.toml").open("rb") as file:
        return str(tomllib.load(file)["project"]["version"])


def generated(root: Path = ROOT) -> dict[str, str]:
    """Every generated file's text, by its path in the repository."""
    services = specs()
    chosen = contracts.contracts(services)
    files = {f"{CONTRACTS}/{path}": text for path, text in contracts.files(services).items()}
    document = asyncapi.system_document(
        services,
        chosen,
        title=TITLE,
        version=version(root),
        bootstrap=str(ServiceSettings.model_fields["kafka_bootstrap_servers"].default),
    )
    files[ASYNCAPI] = contracts.render(document)
    files[PAGE] = eventdocs.render(document)
    return files


@dataclass(frozen=True)
class Difference:
    path: str
    status: str
    """"missing", "stale" or "no publisher"."""
    diff: str = ""

    def __str__(self) -> str:
        return f"{self.status}: {self.path}"


def differences(root: Path = ROOT, wanted: dict[str, str] | None = None) -> list[Difference]:
    """How the committed files differ from what the models generate now (`wanted`)."""
    wanted = generated(root) if wanted is None else wanted
    found = []
    for path, text in wanted.items():
        file = root / path
        if not file.exists():
            found.append(Difference(path, "missing"))
            continue
        old = file.read_text()
        if old != text:
            lines = difflib.unified_diff(
                old.splitlines(),
                text.splitlines(),
                f"{path} (committed)",
                f"{path} (models)",
                lineterm="",
            )
            found.append(Difference(path, "stale", "\n".join(lines)))
    for file in sorted((root / CONTRACTS).rglob("*.json")):
        path = file.relative_to(root).as_posix()
        if path not in wanted:
            found.append(Difference(path, "no publisher"))
    return found


def write(root: Path = ROOT) -> list[Difference]:
    """Bring the files up to date; return what changed."""
    wanted = generated(root)
    changed = differences(root, wanted)
    for difference in changed:
        file = root / difference.path
        if difference.status == "no publisher":
            file.unlink()
            continue
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(wanted[difference.path])
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.dev.contracts", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if stale")
    parser.add_argument("--diff-lines", type=int, default=40, help="diff lines shown per file")
    args = parser.parse_args(argv)
    if not args.check:
        for difference in write():
            print("removed" if difference.status == "no publisher" else "wrote", difference.path)
        return 0
    stale = differences()
    for difference in stale:
        print(difference)
        shown = difference.diff.splitlines()
        for line in shown[: args.diff_lines]:
            print(f"    {line}")
        if len(shown) > args.diff_lines:
            print(f"    ... {len(shown) - args.diff_lines} more lines")
    if stale:
        print(
            f"{len(stale)} file(s) out of date: run `{contracts.REGENERATE}` (or `make contracts`)"
        )
        return 1
    print("contracts are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
