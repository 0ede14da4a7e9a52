# The two commands that set everything up: `make up` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help up down status demo offsets replay test test-fast test-integration test-e2e test-compose lint format bench bench-single bench-postgres jars clean clean-kafka contracts k8s engine images lock

help:
	@echo "make up        start Kafka and the four services (ready when it returns)"
	@echo "               SCALE=\"inventory=2 order=2\": several instances behind HAProxy"
	@echo "make demo      tell the order story against the running stack"
	@echo "make replay SERVICE=product  rebuild a service's derived views from the log"
	@echo "make test      the whole suite: unit, integration (real Kafka), end-to-end"
	@echo "make test-fast the unit tier alone (no broker, seconds)"
	@echo "make offsets GROUP=order OFFSETS_ARGS=\"--to-earliest\"  plan moving a stopped group;"
	@echo "               --execute in OFFSETS_ARGS applies the plan"
	@echo "make test-compose  the compose stack on the local images, scaled, killed, torn down"
	@echo "make bench     CPU per order and throughput of the running stack (make up first);"
	@echo "               make bench-single, make bench-postgres: stacks of their own"
	@echo "make down      stop everything"
	@echo "make clean-kafka  after make down: remove the Kafka cluster's data, to change KAFKA_NODES"
	@echo "make k8s       render the Kubernetes chart and validate it offline (deploy/k8s)"
	@echo "make engine    a Docker engine and the compose plugin (installed here if missing)"
	@echo "make images    build every image of compose.yaml on this machine (compose.images.yaml)"

# The virtualenv gets the dev lock (runtime + dev tools); the image gets requirements.lock.
$(STAMP): requirements-dev.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip uv
	$(VENV)/bin/uv pip install -q --python $(PY) --require-hashes -r requirements-dev.lock
	touch $(STAMP)

# Both locks from pyproject.toml, with hashes; the runtime one keeps the dev one's versions.
# Pinned versions stay as they are; add --upgrade to the first command to move them.
lock: $(STAMP)
	$(VENV)/bin/uv pip compile -q pyproject.toml --extra dev --generate-hashes \
		--custom-compile-command "make lock" -o requirements-dev.lock
	$(VENV)/bin/uv pip compile -q pyproject.toml --generate-hashes -c requirements-dev.lock \
		--custom-compile-command "make lock" -o requirements.lock

jars: $(STAMP)
	$(PY) -m tools.local.kafka fetch

# Several instances of a service behind HAProxy: make up SCALE="inventory=2 order=2"
# (they share its PostgreSQL database: set <NAME>_DATABASE_URL; see docs/scale-out.md).
up: $(STAMP)
	@if [ -n "$(SCALE)" ] && ! command -v haproxy >/dev/null; then apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends haproxy >/dev/null; fi
	$(if $(SCALE),SCALE="$(SCALE)") $(PY) -m tools.local.stack up

down:
	@if [ -x $(PY) ]; then $(PY) -m tools.local.stack down; fi
	@$(PYTHON) -m tools.local.docker engine stop --quiet

# A Docker engine (Debian's dockerd, started here when none answers; `make down` stops it)
# and the compose v2 plugin (built once from its Go module). Needs no virtualenv.
engine:
	$(PYTHON) -m tools.local.docker engine start
	$(PYTHON) -m tools.local.docker compose install

# Every image compose.yaml uses, built here from Debian packages, PyPI, Maven Central and the
# Go module proxy (for machines that cannot pull): docker compose -f compose.yaml
# -f compose.images.yaml ... runs on them. Cached: a second run takes seconds.
images: engine
	$(PYTHON) -m tools.local.images $(IMAGES)

status: $(STAMP)
	$(PY) -m tools.local.stack status

demo: $(STAMP)
	$(PY) -m tools.ops.demo

# Move a consumer group whose members are stopped: OFFSETS_ARGS is one of --to-datetime T,
# --to-earliest, --to-latest, --shift-by N, with --topic T and --execute (without it, the
# plan alone is printed). E.g. make offsets GROUP=product OFFSETS_ARGS="--to-earliest".
offsets: $(STAMP)
	@if [ -z "$(GROUP)" ]; then echo 'make offsets GROUP=<group> OFFSETS_ARGS="--to-earliest [--execute]"' >&2; exit 2; fi
	$(PY) -m tools.ops.offsets "$(GROUP)" $(OFFSETS_ARGS)

# Rebuild a service's derived views from the log (docs/replay.md):
# make replay SERVICE=product [REPLAY_ARGS="--view availability --to-datetime T"]
replay: $(STAMP)
	@test -n "$(SERVICE)" || { echo "make replay SERVICE=<order|inventory|product|user>"; exit 2; }
	$(PY) -m tools.replay $(SERVICE) $(REPLAY_ARGS)

# Throughput and latency against the running stack (`make up` first), beside the limits.
# Options: make bench BENCH_ARGS="--duration 60 --connections 32"; results/ gets the report.
bench: $(STAMP)
	@command -v wrk >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk >/dev/null; }
	$(PY) -m tools.bench $(BENCH_ARGS)

# Python keeps its bytecode (and pytest its rewritten test modules) in __pycache__, even
# where the environment asks it not to: each xdist worker would compile every module again.
unexport PYTHONDONTWRITEBYTECODE

# Tests run in WORKERS pytest-xdist processes: a file stays whole on one worker, the
# secured-cluster files share one (tests/conftest.py); WORKERS=0 runs them in this process.
WORKERS ?= 3
XDIST = -n $(WORKERS) --dist loadscope

# The compose tier is not part of it: `make test-compose` (it needs the engine and images).
test: $(STAMP)
	$(PY) -m pytest $(XDIST) -m "not compose"

test-fast: $(STAMP)
	$(PY) -m pytest -m unit -q -n 2

test-integration: $(STAMP)
	$(PY) -m pytest -m integration $(XDIST)

test-e2e: $(STAMP)
	$(PY) -m pytest -m e2e $(XDIST)

# The compose tier alone: the stack of compose.yaml on the images `make images` builds, on
# ports of its own (tests/compose); the engine and images are made first if missing.
test-compose: $(STAMP) images
	$(PY) -m pytest -m compose

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The event contracts, AsyncAPI document and docs/events.md, from the services' models.
contracts: $(STAMP)
	$(PY) -m tools.dev.contracts

# The Kubernetes chart (deploy/k8s), offline: its generated file current, helm lint, every
# variant rendered and validated strictly by kubeconform against the vendored schemas. Helm
# and kubeconform are built once from the Go module proxy and cached (tools/dev/gotools.py).
k8s: $(STAMP)
	$(PY) -m tools.dev.k8s check

clean: down
	rm -rf .run

# The local cluster's data (its nodes' folders, id and size), after `make down`: the next
# `make up` formats a new cluster, of KAFKA_NODES nodes. Jars, certificates and passwords stay.
clean-kafka: $(STAMP)
	$(PY) -m tools.local.stack reset-kafka

# The same on a stack of its own: one plaintext broker, no span export, SQLite (ports
# 8201-8204, broker 9192); `make up`'s stack may run beside it.
bench-single: $(STAMP)
	@command -v wrk >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk >/dev/null; }
	$(PY) -m tools.bench --backend single $(BENCH_ARGS)

# The same on a PostgreSQL stack of its own (ports 8101-8104, 2 workers per service).
bench-postgres: $(STAMP)
	@command -v wrk >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk >/dev/null; }
	bash tools/local/postgres.sh install
	$(PY) -m tools.bench --backend postgres $(BENCH_ARGS)
