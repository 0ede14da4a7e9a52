"""Every image the compose stack needs, built on this machine (`make images`).

    python -m tools.local.images [NAME ...] [--refresh] [--list]

For machines that cannot pull from a container registry: each image comes from Debian's
packages, PyPI, Maven Central or the Go module proxy, on a base made by debootstrap.
compose.yaml keeps the official images; `-f compose.yaml -f compose.images.yaml` runs the
stack on these instead (that file maps each service to the image built here).

  base        event-driven-shop/debian:bookworm    debootstrap minbase + this machine's CAs
  python      event-driven-shop/python:3.11        stands in for python:3.11-slim
  services    event-driven-shop:latest             the root Dockerfile, runtime lock only
  kafka       event-driven-shop/kafka:<pom>        Maven jars, Debian's Java, KafkaDockerWrapper
  postgres    event-driven-shop/postgres:15        Debian's PostgreSQL, POSTGRES_* and initdb.d
  haproxy     event-driven-shop/haproxy:2.6        Debian's HAProxy
  prometheus  event-driven-shop/prometheus:2.42    Debian's Prometheus
  jaeger      event-driven-shop/jaeger:<v2>        built from its Go module (no embedded UI)

Grafana is not among them: it is not packaged by Debian and its Go module is not to be used
here (AGPL); compose.images.yaml puts it behind the `grafana` profile.

The images build with `--network host` (the engine started by tools.local.docker has no
NAT) and trust this machine's CA certificates, so package downloads through a TLS proxy
work. A second run with nothing changed takes seconds: the base is rebuilt only when its
inputs change (or with --refresh, to pick up Debian's updates), the rest is Docker's
layer cache; the Kafka jars are kept under .run/images, and the Jaeger binary beside the
Go tools outside the checkout (tools.dev.gotools), so a fresh clone does not build it again.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tools.dev import gotools
from tools.local import gomod

ROOT = Path(__file__).resolve().parents[2]
IMAGES_DIR = ROOT / "deploy" / "images"
WORK_DIR = ROOT / ".run" / "images"
KAFKA_POM = ROOT / "tools" / "local" / "kafka-broker" / "pom.xml"
CA_DIR = Path("/usr/local/share/ca-certificates")
INPUTS_LABEL = "org.event-driven-shop.inputs"

SUITE = "bookworm"
"""Debian's release for every image: its python3 is 3.11, the version the services use."""
BASE_PACKAGES = ("ca-certificates",)
JAEGER_MODULE = "github.com/jaegertracing/jaeger"
JAEGER_MODULE_VERSION = "v1.75.0"
"""Jaeger tags each release twice; module v1.75.0 is the release of Jaeger v2.12.0."""
JAEGER_VERSION = "2.12.0"


def kafka_version() -> str:
    """Kafka's version: kafka.version in tools/local/kafka-broker/pom.xml (the local
    broker's too)."""
    namespace = {"m": "http://maven.apache.org/POM/4.0.0"}
    node = ET.parse(KAFKA_POM).getroot().find("m:properties/m:kafka.version", namespace)
    if node is None or not node.text:
        raise RuntimeError(f"{KAFKA_POM} has no kafka.version")
    return node.text.strip()


@dataclass(frozen=True)
class Image:
    """One image: what it is called, where its Dockerfile is, and what it is built from."""

    name: str
    ref: str
    dockerfile: Path
    context: Path
    build_args: dict[str, str] = field(default_factory=dict)
    needs: tuple[str, ...] = ()
    prepare: Callable[[Path], None] | None = None
    """Puts files made on the host (jars, a binary) into a copy of the context."""


def images() -> list[Image]:
    """Every image, in build order (an image comes after those it is built FROM)."""
    base = "event-driven-shop/debian:bookworm"
    python = "event-driven-shop/python:3.11"
    on_base = {"BASE_IMAGE": base}
    return [
        Image("base", base, Path(), Path()),
        Image("python", python, *_here("python"), on_base, ("base",)),
        Image(
            "services",
            "event-driven-shop:latest",
            ROOT / "Dockerfile",
            ROOT,
            {"PYTHON_IMAGE": python},
            ("python",),
        ),
        Image(
            "kafka",
            f"event-driven-shop/kafka:{kafka_version()}",
            *_here("kafka"),
            on_base,
            ("base",),
            _kafka_jars,
        ),
        Image("postgres", "event-driven-shop/postgres:15", *_here("postgres"), on_base, ("base",)),
        Image("haproxy", "event-driven-shop/haproxy:2.6", *_here("haproxy"), on_base, ("base",)),
        Image(
            "prometheus",
            "event-driven-shop/prometheus:2.42",
            *_here("prometheus"),
            on_base,
            ("base",),
        ),
        Image(
            "jaeger",
            f"event-driven-shop/jaeger:{JAEGER_VERSION}",
            *_here("jaeger"),
            on_base,
            ("base",),
            _jaeger_binary,
        ),
    ]


def _here(name: str) -> tuple[Path, Path]:
    return IMAGES_DIR / name / "Dockerfile", IMAGES_DIR / name


# --- Debian's mirror, from this machine's apt sources ------------------------------------


def apt_entries(text: str, deb822: bool) -> list[tuple[str, str]]:
    """(URI, suite) of each `deb` entry of an apt sources file (one-line or deb822 format)."""
    entries: list[tuple[str, str]] = []
    if deb822:
        for paragraph in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            for line in paragraph.splitlines():
                if line.startswith("#") or ":" not in line or line[:1].isspace():
                    continue
                key, value = line.split(":", 1)
                fields[key.strip().lower()] = value.strip()
            if "deb" not in fields.get("types", "").split():
                continue
            if fields.get("enabled", "yes").lower() == "no":
                continue
            for uri in fields.get("uris", "").split():
                entries += [(uri, suite) for suite in fields.get("suites", "").split()]
        return entries
    for line in text.splitlines():
        words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
        if len(words) >= 3 and words[0] == "deb":
            entries.append((words[1], words[2]))
    return entries


def debian_mirrors(apt_dir: Path = Path("/etc/apt")) -> tuple[str, str | None]:
    """The Debian archive apt uses here, and its security archive if it has one.

    DEBIAN_MIRROR (and DEBIAN_SECURITY_MIRROR) override what the apt sources say."""
    entries: list[tuple[str, str]] = []
    files = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*"))]
    for path in files:
        if path.is_file() and path.suffix in (".list", ".sources"):
            entries += apt_entries(path.read_text(errors="replace"), path.suffix == ".sources")
    suites = {suite: uri.rstrip("/") for uri, suite in reversed(entries)}
    codename = _codename()
    archive = os.environ.get("DEBIAN_MIRROR") or suites.get(codename) or suites.get(SUITE)
    if not archive:
        raise RuntimeError(
            "no Debian archive in the apt sources (/etc/apt/sources.list*): set DEBIAN_MIRROR"
        )
    security = os.environ.get("DEBIAN_SECURITY_MIRROR") or suites.get(f"{codename}-security")
    return archive, security


def _codename() -> str:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return SUITE
    found = re.search(r"^VERSION_CODENAME=\"?([a-z]+)", text, re.M)
    return found.group(1) if found else SUITE


# --- docker ------------------------------------------------------------------------------


def _docker(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, **kwargs)  # type: ignore[call-overload, no-any-return]


def image_id(ref: str) -> str | None:
    done = _docker("image", "inspect", "--format", "{{.Id}}", ref)
    return done.stdout.strip() if done.returncode == 0 else None


def image_size(ref: str) -> int:
    done = _docker("image", "inspect", "--format", "{{.Size}}", ref)
    return int(done.stdout.strip()) if done.returncode == 0 else 0


def image_label(ref: str, label: str) -> str | None:
    template = '{{index .Config.Labels "' + label + '"}}'
    done = _docker("image", "inspect", "--format", template, ref)
    value = done.stdout.strip()
    return value if done.returncode == 0 and value and value != "<no value>" else None


def _apt_install(command: str, package: str) -> None:
    """Install Debian's `package` unless `command` is on PATH already."""
    if shutil.which(command) is not None:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError(f"{command} is missing: install {package} (Debian: apt-get install)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=True)
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)


# --- the base image: debootstrap ----------------------------------------------------------

# Like the official slim images: no manuals, documentation or translations in any layer.
SLIM_DPKG = """\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
"""
# Images install what they name, and leave no package lists or archives behind.
APT_CONF = """\
APT::Install-Recommends "false";
APT::Install-Suggests "false";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Acquire::Languages "none";
"""


def _certificates() -> list[Path]:
    return sorted(CA_DIR.glob("*.crt")) if CA_DIR.is_dir() else []


def base_inputs() -> str:
    """A digest of what the base image is made of; it is rebuilt when this changes."""
    digest = hashlib.sha256()
    for part in (SUITE, "minbase", *BASE_PACKAGES, SLIM_DPKG, APT_CONF):
        digest.update(part.encode() + b"\0")
    for cert in _certificates():
        digest.update(cert.name.encode() + b"\0" + cert.read_bytes())
    return digest.hexdigest()[:16]


def build_base(image: Image, refresh: bool) -> bool:
    """debootstrap a minimal Debian with this machine's CAs and import it. True if built."""
    inputs = base_inputs()
    if not refresh and image_label(image.ref, INPUTS_LABEL) == inputs:
        return False
    if os.geteuid() != 0:
        raise RuntimeError("debootstrap needs root")
    _apt_install("debootstrap", "debootstrap")
    archive, security = debian_mirrors()
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rootfs-", dir=WORK_DIR) as tmp:
        rootfs = Path(tmp) / "rootfs"
        cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}"]
        done = subprocess.run([*cmd, SUITE, str(rootfs), archive], capture_output=True, text=True)
        if done.returncode != 0:
            log = rootfs / "debootstrap" / "debootstrap.log"
            detail = log.read_text(errors="replace")[-3000:] if log.is_file() else done.stderr
            raise RuntimeError(f"debootstrap failed ({done.returncode}):\n{detail}")
        _configure_rootfs(rootfs, archive, security)
        _slim_rootfs(rootfs)
        _import_rootfs(rootfs, image.ref, inputs)
    return True


def _configure_rootfs(rootfs: Path, archive: str, security: str | None) -> None:
    """Its apt sources, dpkg and apt kept slim, and this machine's CAs trusted."""
    sources = [f"deb {archive} {SUITE} main", f"deb {archive} {SUITE}-updates main"]
    if security:
        sources.append(f"deb {security} {SUITE}-security main")
    (rootfs / "etc/apt/sources.list").write_text("\n".join(sources) + "\n")
    (rootfs / "etc/dpkg/dpkg.cfg.d/slim").write_text(SLIM_DPKG)
    (rootfs / "etc/apt/apt.conf.d/slim").write_text(APT_CONF)
    for cert in _certificates():
        shutil.copyfile(cert, rootfs / "usr/local/share/ca-certificates" / cert.name)
    update = ["chroot", str(rootfs), "update-ca-certificates"]
    subprocess.run(update, check=True, capture_output=True)


def _slim_rootfs(rootfs: Path) -> None:
    """Without apt's caches and lists, logs, manuals, and docs and locales but their
    copyrights and aliases."""
    for pattern in (
        "var/cache/apt/archives/*.deb",
        "var/cache/apt/*.bin",
        "var/lib/apt/lists/*",
        "var/log/*.log",
        "var/log/apt/*",
        "usr/share/man/*",
        "usr/share/info/*",
        "usr/share/lintian/*",
    ):
        for path in rootfs.glob(pattern):
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    _slim_tree(rootfs / "usr/share/doc", keep="copyright")
    _slim_tree(rootfs / "usr/share/locale", keep="locale.alias")


def _import_rootfs(rootfs: Path, ref: str, inputs: str) -> None:
    """`docker import` of the root filesystem as `ref`, labelled with its `inputs`."""
    tar = subprocess.Popen(
        ["tar", "--numeric-owner", "-C", str(rootfs), "--exclude=./dev/*", "-c", "."],
        stdout=subprocess.PIPE,
    )
    changes = [
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "ENV LANG=C.UTF-8",
        f"LABEL {INPUTS_LABEL}={inputs}",
        'CMD ["bash"]',
    ]
    args = [arg for change in changes for arg in ("--change", change)]
    imported = subprocess.run(
        ["docker", "import", *args, "-", ref], stdin=tar.stdout, capture_output=True, text=True
    )
    assert tar.stdout is not None
    tar.stdout.close()
    if tar.wait() != 0 or imported.returncode != 0:
        raise RuntimeError(f"docker import of the root filesystem failed:\n{imported.stderr}")


def _slim_tree(folder: Path, keep: str) -> None:
    """Remove everything under `folder` but the files named `keep`."""
    if not folder.is_dir():
        return
    for path in sorted(folder.rglob("*"), reverse=True):
        if path.is_dir() and not path.is_symlink():
            if not any(path.iterdir()):
                path.rmdir()
        elif path.name != keep:
            path.unlink()


# --- files made on the host ---------------------------------------------------------------


def _kafka_jars(context: Path) -> None:
    """Kafka's jars (the broker's and the tools', per deploy/images/kafka/pom.xml)."""
    pom = IMAGES_DIR / "kafka" / "pom.xml"
    key = hashlib.sha256(pom.read_bytes() + KAFKA_POM.read_bytes()).hexdigest()[:16]
    libs = WORK_DIR / "kafka" / f"libs-{key}"
    if not libs.is_dir():
        _apt_install("mvn", "maven")
        partial = libs.with_name(libs.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        cmd = ["mvn", "-B", "-q", "-f", str(pom), "dependency:copy-dependencies"]
        cmd += ["-DincludeScope=runtime", f"-DoutputDirectory={partial}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"maven could not fetch Kafka's jars:\n{done.stdout[-4000:]}")
        partial.rename(libs)
    shutil.copytree(libs, context / "libs")


def _jaeger_binary(context: Path) -> None:
    """Jaeger v2 (cmd/jaeger), built from its Go module once per version, and kept beside
    the Go tools (tools.dev.gotools), outside the checkout: a fresh clone does not build
    it again."""
    binary = gotools.cache_root() / f"jaeger-{JAEGER_MODULE_VERSION}" / "jaeger"
    if not binary.is_file():
        print(f"  building jaeger {JAEGER_VERSION} from its Go module (minutes)...", flush=True)
        ldflags = f"-X {JAEGER_MODULE}/internal/version.latestVersion=v{JAEGER_VERSION}"
        seconds = gomod.build(JAEGER_MODULE, JAEGER_MODULE_VERSION, "./cmd/jaeger", binary, ldflags)
        print(f"  jaeger built in {seconds:.0f}s", flush=True)
    shutil.copyfile(binary, context / "jaeger")
    (context / "jaeger").chmod(0o755)


# --- building ----------------------------------------------------------------------------


def build(image: Image, refresh: bool) -> bool:
    """Build one image. True if anything was built (False: it was up to date)."""
    if image.name == "base":
        return build_base(image, refresh)
    context = image.context
    staged: tempfile.TemporaryDirectory[str] | None = None
    if image.prepare is not None:
        WORK_DIR.mkdir(parents=True, exist_ok=True)
        staged = tempfile.TemporaryDirectory(prefix=f"{image.name}-", dir=WORK_DIR)
        context = Path(staged.name)
        shutil.copytree(image.context, context, dirs_exist_ok=True)
        image.prepare(context)
    try:
        before = image_id(image.ref)
        cmd = ["docker", "build", "--network", "host", "--force-rm", "-t", image.ref]
        cmd += ["-f", str(context / image.dockerfile.relative_to(image.context))]
        for key, value in image.build_args.items():
            cmd += ["--build-arg", f"{key}={value}"]
        if refresh:
            cmd.append("--no-cache")
        done = subprocess.run(
            [*cmd, str(context)], capture_output=True, text=True, env=_build_env()
        )
        if done.returncode != 0:
            output = (done.stdout + done.stderr)[-6000:]
            raise RuntimeError(f"docker build of {image.ref} failed:\n{output}")
        return image_id(image.ref) != before
    finally:
        if staged is not None:
            staged.cleanup()


def _build_env() -> dict[str, str]:
    """The classic builder unless buildx is installed (BuildKit needs the buildx plugin)."""
    env = dict(os.environ)
    if "DOCKER_BUILDKIT" not in env:
        has_buildx = _docker("buildx", "version").returncode == 0
        env["DOCKER_BUILDKIT"] = "1" if has_buildx else "0"
    return env


def select(names: Iterable[str]) -> list[Image]:
    """The images named and those they are built from, in build order."""
    every = {image.name: image for image in images()}
    wanted: set[str] = set()

    def add(name: str) -> None:
        if name not in every:
            raise SystemExit(f"no image {name!r}; choose from {', '.join(every)}")
        if name not in wanted:
            wanted.add(name)
            for need in every[name].needs:
                add(need)

    for name in names or every:
        add(name)
    return [image for image in every.values() if image.name in wanted]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.local.images",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("names", nargs="*", help="images to build (default: all)")
    parser.add_argument(
        "--refresh", action="store_true", help="rebuild from scratch (Debian's updates)"
    )
    parser.add_argument("--list", action="store_true", help="print each image's name and ref")
    args = parser.parse_args(argv)
    chosen = select(args.names)
    if args.list:
        for image in chosen:
            print(f"{image.name:<12}{image.ref}")
        return 0
    if shutil.which("docker") is None:
        raise SystemExit("no docker CLI on PATH: run `make engine` first")
    started = time.monotonic()
    rows = []
    for image in chosen:
        print(f"{image.name}: {image.ref}", flush=True)
        began = time.monotonic()
        built = build(image, args.refresh)
        seconds = time.monotonic() - began
        size = image_size(image.ref) / 1e6
        state = "built" if built else "cached"
        rows.append(f"  {image.name:<12}{image.ref:<40}{size:7.0f} MB {seconds:6.0f} s  {state}")
    print("\n".join(["images:", *rows]))
    print(f"done in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
