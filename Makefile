# The README's two commands: `make serve` and `make test`. Both set up .venv/ on a fresh machine.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
REPOSITORY ?= model_repository

.PHONY: install test test-fast lint lock serve repository bench clean browser docker-engine image compose-up compose-down

install: $(STAMP)

# System packages, each installed by the target that needs it (as root, with apt-get), never by `install`:
# Debian's Chromium for the page's browser tests (Playwright drives it; its own browser download is not used),
# and a Docker engine (Debian's docker.io, dockerd started when none answers) for the image and its tests.
CHROMIUM ?= /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { echo "installing Debian's chromium (apt-get)"; apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

docker-engine: install
	$(PY) -m deploy.image engine

# Re-installs whenever the pinned requirements or the project metadata change.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The pinned lock files, regenerated from pyproject.toml's dependencies (keeping the current pins where they still
# fit): requirements-serve.txt for the service alone, requirements.txt with every extra.
LOCK := $(VENV)/bin/pip-compile --quiet --strip-extras --no-emit-index-url --no-emit-find-links --annotation-style=line
lock: install
	$(LOCK) --output-file=requirements-serve.txt pyproject.toml
	$(LOCK) --all-extras --output-file=requirements.txt pyproject.toml

lint: install
	$(VENV)/bin/ruff check .

# Everything, the browser and container tests included (`pytest -m "not container"` leaves Docker out).
test: install lint browser docker-engine
	$(PY) -m pytest

# The unit tests only: no Triton, no gateway, no containers, no browser, no full-size nets (under a minute).
test-fast: install lint
	$(PY) -m pytest -m "not integration and not slow and not container"

# Exports the demo models that the repository lacks and (re)generates the pipelines from pipelines.toml.
repository: install
	$(PY) -m server.repository --spec pipelines.toml --repository $(REPOSITORY)

# Triton on 127.0.0.1:8000 (HTTP) / 8001 (gRPC) / 8002 (metrics), the gateway on 127.0.0.1:8080.
serve: repository
	$(PY) -m server.serve --repository $(REPOSITORY)

# The CPU image (Dockerfile.cpu), tagged vgg-serve-cpu:latest and :<version>: the pinned wheels downloaded here,
# the default repository, the official Python base or, where it can't be pulled, a stand-in from Debian's packages.
image: docker-engine
	$(PY) -m deploy.image build

# Triton replicas and the gateway as separate containers from that image (compose.yaml), the gateway on
# 127.0.0.1:8080 once every container is healthy; secrets in build/compose/. Debian's docker-compose where
# `docker compose` is missing.
compose-up: image
	$(PY) -m deploy.compose up

compose-down: install
	$(PY) -m deploy.compose down

# Benchmarks (not tests): pipelines vs bare onnxruntime, FP32 / bf16 / int8 against the machine's peaks, instances x
# threads under load, the gateway vs direct Triton (and vs a bare forwarder) on the demo net and on a full-size
# VGG-11, what a Triton call costs by client, client batch scoring vs perf_analyzer (about 30 minutes on 2 cores).
# Results: bench/results/.
bench: repository
	$(PY) -m bench.pipeline_bench
	$(PY) -m bench.precision_bench
	$(PY) -m bench.threads_bench
	$(PY) -m bench.gateway_bench --bare-proxy --rounds 3
	$(PY) -m bench.gateway_bench --vgg11 --bare-proxy --requests 30 --concurrency 4 --rounds 2
	$(PY) -m bench.triton_clients
	$(PY) -m bench.perf_analyzer_bench

clean:
	rm -rf $(VENV) build *.egg-info

# Rebuilds data/digits and retrains the committed demo models under models/demo/ (about 10 minutes on 2 cores).
.PHONY: demo-models
demo-models: install
	$(PY) -m train.demo_models
