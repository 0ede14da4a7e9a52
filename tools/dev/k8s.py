"""The Kubernetes chart (deploy/k8s/event-driven-shop), checked offline: its generated
file is current, `helm lint --strict` passes, and every variant of its values renders
(`helm template`) to manifests that kubeconform accepts in strict mode against the
vendored schemas (deploy/k8s/schemas), where a resource with no schema fails.

    python -m tools.dev.k8s generate            # rewrite files/registry.yaml from the code
    python -m tools.dev.k8s render [--variant N] # print the manifests
    python -m tools.dev.k8s check               # what `make k8s` runs: all of the above

Helm and kubeconform are built once from the Go module proxy (tools.dev.gotools)."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from tools.dev import gotools, k8s_values

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "k8s" / "event-driven-shop"
GENERATED = CHART / "files" / "registry.yaml"
SCHEMAS = ROOT / "deploy" / "k8s" / "schemas"
KUBERNETES_VERSION = "1.36.0"
"""The Kubernetes API the vendored schemas describe."""
RELEASE = "shop"
NAMESPACE = "shop"

VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    # every optional part on, and a topic prefix
    "everything": {
        "kafka": {
            "topicPrefix": "shop.",
            "version": "4.3.1",
            "rackTopologyKey": "topology.kubernetes.io/zone",
            "storage": {"class": "fast"},
            "topics": {"orders": {"partitions": 12, "config": {"cleanup.policy": "delete"}}},
        },
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
        "postgres": {"imageName": "ghcr.io/cloudnative-pg/postgresql:17", "services": {}},
        "services": {
            "order": {
                "autoscaling": {"maxReplicas": 12},
                "env": {"ORDER_RATE_PER_SUBJECT": "100"},
            },
            "product": {
                "autoscaling": {"enabled": False},
                "replicas": 3,
                "resources": {
                    "requests": {"cpu": "50m", "memory": "128Mi"},
                    "limits": {"cpu": "500m", "memory": "256Mi"},
                },
            },
        },
        "imagePullSecrets": [{"name": "registry"}],
    },
    # no policies (then a list of trusted proxies), no Gateway
    "bare": {
        "networkPolicy": {"enabled": False},
        "forwardedAllowIps": "10.0.0.0/8",
        "gateway": {"enabled": False},
    },
}


def generate() -> bool:
    """Rewrite the generated file; True if it changed."""
    text = k8s_values.render()
    changed = not GENERATED.exists() or GENERATED.read_text() != text
    if changed:
        GENERATED.write_text(text)
    return changed


def render(values: dict[str, Any] | None = None, helm: Path | None = None) -> str:
    """`helm template` of the chart with `values` over its own."""
    helm = helm or gotools.install("helm")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as file:
        yaml.safe_dump(values or {}, file)
        file.flush()
        done = subprocess.run(
            [helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "-f", file.name],
            capture_output=True,
            text=True,
        )
    if done.returncode:
        raise RuntimeError(f"helm template failed:\n{done.stderr}")
    return done.stdout


def documents(manifests: str) -> list[dict[str, Any]]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return [doc for doc in yaml.load_all(manifests, Loader=loader) if doc]


def schema_locations() -> list[str]:
    """kubeconform's templates for the two layouts of deploy/k8s/schemas."""
    kubernetes = "{{ .NormalizedKubernetesVersion }}-standalone{{ .StrictSuffix }}"
    kind = "{{ .ResourceKind }}{{ .KindSuffix }}.json"
    crd = "{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json"
    return [f"{SCHEMAS}/kubernetes/{kubernetes}/{kind}", f"{SCHEMAS}/crds/{crd}"]


def validate(manifests: str, kubeconform: Path | None = None) -> subprocess.CompletedProcess[str]:
    """kubeconform, strict, offline, every resource needing a schema (no
    `-ignore-missing-schemas`), on manifests given on its standard input."""
    kubeconform = kubeconform or gotools.install("kubeconform")
    command = [str(kubeconform), "-strict", "-summary", "-kubernetes-version", KUBERNETES_VERSION]
    for location in schema_locations():
        command += ["-schema-location", location]
    return subprocess.run(command + ["-"], input=manifests, capture_output=True, text=True)


def check() -> int:
    failed = 0
    if k8s_values.render() != (GENERATED.read_text() if GENERATED.exists() else ""):
        print(f"{GENERATED.relative_to(ROOT)} is stale: python -m tools.dev.k8s generate")
        failed += 1
    helm, kubeconform = gotools.install("helm"), gotools.install("kubeconform")
    lint = subprocess.run([helm, "lint", "--strict", str(CHART)], capture_output=True, text=True)
    print(f"helm lint: {lint.stdout.strip().splitlines()[-1] if lint.stdout else lint.stderr}")
    failed += lint.returncode != 0
    for name, values in VARIANTS.items():
        done = validate(render(values, helm), kubeconform)
        print(f"{name}: {done.stdout.strip()}{done.stderr.strip()}")
        failed += done.returncode != 0
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.dev.k8s",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=["generate", "render", "check"])
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="default")
    args = parser.parse_args(argv)
    if args.command == "generate":
        changed = generate()
        print(f"{GENERATED.relative_to(ROOT)} {'rewritten' if changed else 'unchanged'}")
        return 0
    if args.command == "render":
        sys.stdout.write(render(VARIANTS[args.variant]))
        return 0
    return check()


if __name__ == "__main__":
    sys.exit(main())
