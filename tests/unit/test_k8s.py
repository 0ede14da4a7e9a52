"""The Kubernetes chart (deploy/k8s), read as data: its generated file follows the code,
and the manifests it renders hold what the services need and what the local stack
guarantees. No cluster: `helm template` renders, kubeconform validates against the
vendored schemas. Both binaries come from `python -m tools.dev.gotools install` (`make
k8s` runs it); without them the rendered checks skip and say so, except in CI, where they fail."""

from __future__ import annotations

import copy
import inspect
import os
import re
from collections.abc import Iterator
from functools import cache
from typing import Any

import pytest
import yaml
from sqlalchemy import make_url

from services.registry import SERVICES, get
from shared.messaging import exporters
from shared.messaging.consumer import ConsumerWorker
from shared.messaging.outbox import OutboxRelay
from shared.messaging.producer import EventProducer
from shared.runtime.groupcommit import GroupCommit
from shared.runtime.settings import ServiceSettings
from tests.unit.test_compose import env_names, settings_class
from tools.dev import gotools, k8s, k8s_values
from tools.local.kafka_security import Topology, acl_plan
from tools.local.stack import SAMPLING

pytestmark = pytest.mark.unit

NAMES = [service.name for service in SERVICES]
TOPOLOGY = Topology.of_registry()
SECRET_ROOT = "/etc/shop/"


# -- the generated file, without Helm ----------------------------------------------------


@cache
def generated() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(k8s.GENERATED.read_text())
    return loaded


def test_the_generated_file_is_what_the_code_says() -> None:
    assert k8s.GENERATED.read_text() == k8s_values.render(), (
        f"{k8s.GENERATED.relative_to(k8s.ROOT)} is stale: run `python -m tools.dev.k8s "
        "generate` and commit the result"
    )


def grants(users: list[dict[str, Any]], prefix: str) -> list[tuple[str, str, str, str, str]]:
    """KafkaUser ACLs as (principal, resource, name, pattern, operation), as Strimzi makes
    them; `prefix` goes before the names the generated file marks `prefixed`."""
    found = []
    for user in users:
        for acl in user["acls"]:
            name = prefix + acl["name"] if acl.get("prefixed") else acl["name"]
            for operation in acl["operations"]:
                found.append((user["name"], acl["type"], name, acl["patternType"], operation))
    return found


def planned(prefix: str) -> list[tuple[str, str, str, str, str]]:
    """acl_plan, the local cluster's grants, spelt as in a KafkaUser."""
    return [
        (
            g.principal,
            g.resource.name.lower(),
            g.name,
            "prefix" if g.pattern.name == "PREFIXED" else "literal",
            "".join(part.capitalize() for part in g.operation.name.split("_")),
        )
        for g in acl_plan(prefix, TOPOLOGY)
    ]


@pytest.mark.parametrize("prefix", ["", "shop."])
def test_generated_kafka_users_grant_exactly_the_acl_plan(prefix: str) -> None:
    assert sorted(grants(generated()["kafkaUsers"], prefix)) == sorted(planned(prefix))


def test_generated_topics_are_the_stacks_with_three_copies_two_in_sync() -> None:
    topics = {topic["name"]: topic for topic in generated()["topics"]}
    assert sorted(topics) == TOPOLOGY.topics
    for topic in topics.values():
        assert topic["replicas"] == 3
        assert topic["config"]["min.insync.replicas"] == 2
        assert topic["partitions"] >= 3


def test_processed_ids_outlive_every_record_on_an_event_topic() -> None:
    """A record is deleted once its segment is closed and older than the retention; a
    consumer must remember its id longer, or a replay re-applies it. (A compacted state
    topic keeps its newest records forever: its consumers apply one again harmlessly.)"""
    keep = ServiceSettings.model_fields["processed_retention_hours"].default * 3600 * 1000
    deleted = [t for t in generated()["topics"] if t["config"]["cleanup.policy"] == "delete"]
    assert {t["name"] for t in deleted} == {"orders", "stock", "dead-letters"}
    for topic in deleted:
        config = topic["config"]
        assert 0 < config["retention.ms"] and config["retention.ms"] + config["segment.ms"] < keep


def test_each_public_path_belongs_to_one_service_and_none_is_an_ops_route() -> None:
    owners: dict[str, str] = {}
    for service in generated()["services"]:
        for path in service["paths"]:
            assert path not in owners, f"{path}: {owners.get(path)} and {service['name']}"
            owners[path] = service["name"]
    assert owners["/orders"] == "order" and owners["/token"] == "user"
    assert not {"/health", "/ready", "/metrics"} & set(owners)


# -- the rendered manifests ----------------------------------------------------------------


def binary(name: str) -> Any:
    """The cached binary; missing, the test skips, except in CI (`.ci/run` builds both)."""
    path = gotools.find(name)
    if path is None:
        built = f"{name} is not built: `python -m tools.dev.gotools install {name}`"
        if os.environ.get("CI"):
            pytest.fail(built)
        pytest.skip(built)
    return path


@cache
def rendered(variant: str) -> str:
    return k8s.render(k8s.VARIANTS[variant], binary("helm"))


@cache
def manifests(variant: str = "default") -> list[dict[str, Any]]:
    """The rendered documents, parsed once: tests must not change them."""
    return k8s.documents(rendered(variant))


def of_kind(kind: str, variant: str = "default") -> list[dict[str, Any]]:
    return [doc for doc in manifests(variant) if doc["kind"] == kind]


def named(kind: str, name: str, variant: str = "default") -> dict[str, Any]:
    found = [doc for doc in of_kind(kind, variant) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind} named {name}"
    return found[0]


def deployment(service: str, variant: str = "default") -> dict[str, Any]:
    return named("Deployment", f"{k8s.RELEASE}-{service}", variant)


def container(service: str, variant: str = "default") -> dict[str, Any]:
    (only,) = deployment(service, variant)["spec"]["template"]["spec"]["containers"]
    return only


def env(service: str, variant: str = "default") -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container(service, variant)["env"]}


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, selector
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def pod_labels(service: str) -> dict[str, str]:
    labels: dict[str, str] = deployment(service)["spec"]["template"]["metadata"]["labels"]
    return labels


@pytest.mark.parametrize("variant", sorted(k8s.VARIANTS))
def test_kubeconform_accepts_every_variant_strictly_with_a_schema_for_each(variant: str) -> None:
    done = k8s.validate(rendered(variant), binary("kubeconform"))
    assert done.returncode == 0, done.stdout + done.stderr
    count = len(manifests(variant))
    assert f"Valid: {count}, Invalid: 0, Errors: 0, Skipped: 0" in done.stdout, done.stdout


def test_kubeconform_refuses_an_unknown_field_and_a_kind_without_a_schema() -> None:
    """The validation can fail: strict about fields, and no resource passes unchecked."""
    doc = copy.deepcopy(deployment("order"))
    doc["spec"]["template"]["spec"]["containers"][0]["readinessProb"] = {}
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}}
    for wrong, says in ((doc, "readinessProb"), (secret, "could not find schema")):
        done = k8s.validate(yaml.safe_dump(wrong), binary("kubeconform"))
        assert done.returncode != 0 and says in done.stdout, done.stdout


@pytest.mark.parametrize("name", NAMES)
def test_each_service_runs_by_its_registered_name_and_port(name: str) -> None:
    main = container(name)
    assert main["command"] == ["python", "-m", "services", name, "--host", "0.0.0.0"]
    assert main["ports"] == [{"name": "http", "containerPort": get(name).port, "protocol": "TCP"}]
    service = named("Service", f"{k8s.RELEASE}-{name}")
    assert selects({"matchLabels": service["spec"]["selector"]}, pod_labels(name))
    assert service["spec"]["ports"][0]["port"] == get(name).port


@pytest.mark.parametrize("name", NAMES)
def test_each_service_has_liveness_readiness_and_startup_probes(name: str) -> None:
    main = container(name)
    assert main["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert main["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert main["startupProbe"]["httpGet"]["path"] == "/health"


def quantity(value: str | int) -> float:
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "": 1}
    number, unit = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value)).groups()  # type: ignore[union-attr]
    return float(number) * units[unit]


@pytest.mark.parametrize("name", NAMES)
def test_each_service_requests_what_it_was_measured_to_use_and_is_limited(name: str) -> None:
    resources = container(name)["resources"]
    values = yaml.safe_load((k8s.CHART / "values.yaml").read_text())
    footprint = values["footprint"][name]
    assert quantity(resources["requests"]["memory"]) >= footprint["peakRssMiB"] * 2**20
    assert quantity(resources["requests"]["cpu"]) * 1000 >= footprint["idleMillicores"]
    assert quantity(resources["limits"]["memory"]) > quantity(resources["requests"]["memory"])
    assert quantity(resources["limits"]["cpu"]) >= quantity(resources["requests"]["cpu"])


@pytest.mark.parametrize("name", NAMES)
def test_each_service_runs_unprivileged_on_a_read_only_root(name: str) -> None:
    pod = deployment(name)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    context = container(name)["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container(name)["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]


def stop_budget() -> float:
    """How long a service's lifespan shutdown may take at most: the joins of
    ServiceRuntime.stop, from the code's own defaults."""
    stops = (GroupCommit.stop, ConsumerWorker.stop, OutboxRelay.stop, EventProducer.close)
    return sum(float(inspect.signature(stop).parameters["timeout"].default) for stop in stops)


@pytest.mark.parametrize("name", NAMES)
def test_each_service_is_given_the_time_its_drain_takes(name: str) -> None:
    pod = deployment(name)["spec"]["template"]["spec"]
    pre_stop = container(name)["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = float(env(name)["SHUTDOWN_GRACE_SECONDS"]["value"])
    assert pre_stop >= 1 and grace >= 1
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + grace + stop_budget()


@pytest.mark.parametrize("name", NAMES)
def test_each_service_has_a_disruption_budget(name: str) -> None:
    budget = named("PodDisruptionBudget", f"{k8s.RELEASE}-{name}")
    assert selects(budget["spec"]["selector"], pod_labels(name))
    assert budget["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("name", [s.name for s in SERVICES if TOPOLOGY.subscribes[s.name]])
def test_each_consuming_service_scales_on_cpu_up_to_its_partitions(name: str) -> None:
    hpa = named("HorizontalPodAutoscaler", f"{k8s.RELEASE}-{name}")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment(name)["metadata"]["name"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    partitions = {t["name"]: t["partitions"] for t in generated()["topics"]}
    most = max(partitions[t] for t in TOPOLOGY.subscribes[name])
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] == most
    assert "replicas" not in deployment(name)["spec"]  # the HPA owns it


def kafka_users(variant: str) -> list[dict[str, Any]]:
    users = []
    for user in of_kind("KafkaUser", variant):
        assert user["spec"]["authentication"] == {"type": "scram-sha-512"}
        assert user["spec"]["authorization"]["type"] == "simple"
        acls = [
            {
                "type": acl["resource"]["type"],
                "name": acl["resource"]["name"],
                "patternType": acl["resource"]["patternType"],
                "operations": acl["operations"],
            }
            for acl in user["spec"]["authorization"]["acls"]
        ]
        users.append({"name": user["metadata"]["name"], "acls": acls})
    return users


@pytest.mark.parametrize(("variant", "prefix"), [("default", ""), ("everything", "shop.")])
def test_rendered_kafka_users_grant_exactly_the_local_clusters_acl_plan(
    variant: str, prefix: str
) -> None:
    assert sorted(grants(kafka_users(variant), "")) == sorted(planned(prefix))


@pytest.mark.parametrize(("variant", "prefix"), [("default", ""), ("everything", "shop.")])
def test_rendered_topics_are_the_registrys_with_their_settings(variant: str, prefix: str) -> None:
    topics = {t["spec"]["topicName"]: t["spec"] for t in of_kind("KafkaTopic", variant)}
    assert sorted(topics) == [prefix + name for name in TOPOLOGY.topics]
    overrides = k8s.VARIANTS[variant].get("kafka", {}).get("topics", {})
    for name in TOPOLOGY.topics:
        spec, expected = topics[prefix + name], k8s_values.topic_spec(name)
        partitions = overrides.get(name, {}).get("partitions", expected["partitions"])
        assert (spec["partitions"], spec["replicas"]) == (partitions, expected["replicas"])
        for key, value in expected["config"].items():
            assert spec["config"][key] == value, (name, key)


def test_kafka_is_three_kraft_nodes_with_scram_over_tls_and_acls() -> None:
    (pool,) = of_kind("KafkaNodePool")
    assert pool["spec"]["replicas"] == 3
    assert sorted(pool["spec"]["roles"]) == ["broker", "controller"]
    (kafka,) = of_kind("Kafka")
    assert pool["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
    (listener,) = kafka["spec"]["kafka"]["listeners"]
    assert listener["tls"] is True and listener["authentication"] == {"type": "scram-sha-512"}
    assert kafka["spec"]["kafka"]["authorization"]["type"] == "simple"
    config = kafka["spec"]["kafka"]["config"]
    assert config["min.insync.replicas"] == 2 and config["default.replication.factor"] == 3
    assert config["unclean.leader.election.enable"] is False
    assert config["auto.create.topics.enable"] is False
    peers = listener["networkPolicyPeers"]
    assert sorted(
        p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in peers
    ) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_each_service_has_its_own_database_role_and_secret(name: str) -> None:
    cluster = named("Cluster", f"{k8s.RELEASE}-{name}-db")
    assert cluster["spec"]["bootstrap"]["initdb"] == {"database": name, "owner": name}
    url = make_url(env(name)[f"{name.upper()}_DATABASE_URL"]["value"])
    assert (url.username, url.database, url.password) == (name, name, None)
    assert url.host == f"{k8s.RELEASE}-{name}-db-rw"
    assert url.query["sslmode"] == "verify-full"
    sources = secret_sources(name)
    assert sources[f"{k8s.RELEASE}-{name}-db-app"] == {"password": "database/password"}


def secret_sources(name: str) -> dict[str, dict[str, str]]:
    """The Secrets a service's pod mounts: name -> {key: path under the secret root}."""
    pod = deployment(name)["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if "projected" in v]
    mounted: dict[str, dict[str, str]] = {}
    for source in volume["projected"]["sources"]:
        assert set(source) == {"secret"}, source
        items = {item["key"]: item["path"] for item in source["secret"]["items"]}
        mounted[source["secret"]["name"]] = items
    return mounted


@pytest.mark.parametrize("name", NAMES)
def test_each_service_signs_in_to_kafka_as_its_own_user_from_strimzis_secret(name: str) -> None:
    variables = env(name)
    assert variables["KAFKA_SASL_USERNAME"]["value"] == name
    assert variables["KAFKA_SECURITY_PROTOCOL"]["value"] == "SASL_SSL"
    assert named("KafkaUser", name)["spec"]["authentication"]["type"] == "scram-sha-512"
    assert secret_sources(name)[name] == {"password": "kafka/password"}
    group = variables[f"{name.upper()}_CONSUMER_GROUP"]["value"]
    assert ("group", group) in {(g[1], g[2]) for g in planned("") if g[0] == name}


@pytest.mark.parametrize("variant", sorted(k8s.VARIANTS))
def test_no_secret_value_is_in_the_chart(variant: str) -> None:
    """No Secret objects at all; a variable that names a password or key either is a
    *_FILE path under the mounted secrets or comes from a Secret by reference."""
    assert not of_kind("Secret", variant)
    for name in NAMES:
        for key, item in env(name, variant).items():
            if key.endswith("_FILE"):
                assert item["value"].startswith(SECRET_ROOT), key
            elif re.search(r"(PASSWORD|SECRET|_KEY)$", key):
                assert set(item) == {"name", "valueFrom"}, key
                assert "secretKeyRef" in item["valueFrom"], key


def test_only_the_user_service_mounts_the_operator_password_and_signing_keys() -> None:
    values = yaml.safe_load((k8s.CHART / "values.yaml").read_text())["secrets"]
    private = {values["operatorPassword"]["name"], values["userKeys"]["name"]}
    for name in NAMES:
        assert bool(private & set(secret_sources(name))) == (name == "user"), name


@pytest.mark.parametrize("name", NAMES)
def test_each_service_environment_is_read_by_its_settings(name: str) -> None:
    known = env_names(settings_class(name))
    outside = {"FORWARDED_ALLOW_IPS"}  # uvicorn's
    names = {k for k in env(name) if not k.startswith("OTEL_") and k not in outside}
    unknown = sorted(names - set(known))
    assert not unknown, f"{settings_class(name).__name__} reads none of {unknown}"


def policies_for(name: str) -> list[dict[str, Any]]:
    return [
        p
        for p in of_kind("NetworkPolicy")
        if p["spec"]["podSelector"] and selects(p["spec"]["podSelector"], pod_labels(name))
    ]


def test_the_namespace_denies_everything_by_default() -> None:
    deny = named("NetworkPolicy", f"{k8s.RELEASE}-default-deny")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}


def egress_targets(policy: dict[str, Any]) -> Iterator[tuple[int, dict[str, Any]]]:
    for rule in policy["spec"]["egress"]:
        for port in rule["ports"]:
            for peer in rule["to"]:
                yield port["port"], peer


@pytest.mark.parametrize("name", NAMES)
def test_each_service_reaches_only_dns_kafka_its_database_and_the_collector(name: str) -> None:
    (policy,) = policies_for(name)
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = policy["spec"]["ingress"]
    assert ingress["ports"] == [{"protocol": "TCP", "port": get(name).port}]
    kafka = named("Kafka", k8s.RELEASE)["metadata"]["name"]
    allowed = {
        53: lambda peer: "namespaceSelector" in peer,
        9093: lambda peer: (
            peer["podSelector"]["matchLabels"]["strimzi.io/name"] == f"{kafka}-kafka"
        ),
        5432: lambda peer: (
            peer["podSelector"]["matchLabels"] == {"cnpg.io/cluster": f"{k8s.RELEASE}-{name}-db"}
        ),
        4318: lambda peer: (
            peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "otel-collector"
        ),
    }
    for port, peer in egress_targets(policy):
        assert port in allowed and allowed[port](peer), (port, peer)
    assert {port for port, _ in egress_targets(policy)} == set(allowed)


@pytest.mark.parametrize("name", NAMES)
def test_each_database_takes_connections_from_its_own_service_only(name: str) -> None:
    policy = named("NetworkPolicy", f"{k8s.RELEASE}-{name}-db")
    assert policy["spec"]["podSelector"]["matchLabels"] == {
        "cnpg.io/cluster": f"{k8s.RELEASE}-{name}-db"
    }
    services = [
        peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        for rule in policy["spec"]["ingress"]
        for peer in rule["from"]
        if "app.kubernetes.io/component" in peer.get("podSelector", {}).get("matchLabels", {})
    ]
    assert services == [name]


def test_the_route_sends_each_public_path_to_its_service_and_nothing_else() -> None:
    (route,) = of_kind("HTTPRoute")
    routed = {}
    for rule in route["spec"]["rules"]:
        (backend,) = rule["backendRefs"]
        for match in rule["matches"]:
            assert match["path"]["type"] == "PathPrefix"
            routed[match["path"]["value"]] = (backend["name"], backend["port"])
    expected = {
        path: (f"{k8s.RELEASE}-{s['name']}", s["port"])
        for s in generated()["services"]
        for path in s["paths"]
    }
    assert routed == expected


def test_services_send_spans_to_the_collector_which_exports_to_jaeger() -> None:
    collector = named("Service", f"{k8s.RELEASE}-otel-collector")
    for name in NAMES:
        endpoint = env(name)["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"]
        assert endpoint == f"http://{collector['metadata']['name']}:4318"
    config = yaml.safe_load(
        named("ConfigMap", f"{k8s.RELEASE}-otel-collector")["data"]["config.yaml"]
    )
    (exporter,) = config["service"]["pipelines"]["traces"]["exporters"]
    assert "jaeger" in config["exporters"][exporter]["endpoint"]


def test_the_chart_samples_as_make_up_does_with_values_the_services_accept() -> None:
    tracing = yaml.safe_load((k8s.CHART / "values.yaml").read_text())["tracing"]
    chosen = {
        "OTEL_TRACES_SAMPLER": tracing["sampler"],
        "OTEL_TRACES_SAMPLER_ARG": tracing["samplerArg"],
    }
    assert chosen == SAMPLING
    exporters.sampler(chosen)  # what each pod checks at start-up
    template = (k8s.CHART / "templates" / "_env.tpl").read_text()
    assert (
        "- name: OTEL_TRACES_SAMPLER\n  value: {{ $root.Values.tracing.sampler | quote }}"
        in template
    )
    assert (
        "- name: OTEL_TRACES_SAMPLER_ARG\n  value: {{ $root.Values.tracing.samplerArg | quote }}"
        in template
    )


def test_service_monitors_replace_the_scrape_annotations_when_enabled() -> None:
    assert not of_kind("ServiceMonitor")
    annotations = deployment("order")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/metrics"
    monitors = of_kind("ServiceMonitor", "everything")
    assert len(monitors) == len(NAMES)
    assert "annotations" not in deployment("order", "everything")["spec"]["template"]["metadata"]


def test_trusting_any_forwarded_for_needs_the_network_policies() -> None:
    unsafe = {"networkPolicy": {"enabled": False}, "forwardedAllowIps": "*"}
    with pytest.raises(RuntimeError, match="forwardedAllowIps"):
        k8s.render(unsafe, binary("helm"))
