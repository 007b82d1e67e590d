# Every target runs inside .venv, which `make setup` builds from requirements.txt and requirements-serving.txt
# (idempotent).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-serving.txt | sha1sum | cut -c1-12)
# KServe's model server (deploy/kserve/model_server.py) has an environment of its own: tests/test_kserve.py.
KSERVE_VENV := .venv-kserve
KSERVE_STAMP := $(KSERVE_VENV)/.installed-$(shell sha1sum deploy/kserve/requirements-model-server.txt | cut -c1-12)

DATA ?= data/synthetic
OUTPUT ?= model
ARGS ?=

.PHONY: setup test data inspect train evaluate demo-model

setup: $(STAMP)

$(STAMP): requirements.txt requirements-serving.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	rm -f $(VENV)/.installed-* && touch $@

.PHONY: kserve-env
kserve-env: $(KSERVE_STAMP)

$(KSERVE_STAMP): deploy/kserve/requirements-model-server.txt
	test -x $(KSERVE_VENV)/bin/python || $(PYTHON) -m venv $(KSERVE_VENV)
	$(KSERVE_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r $<
	rm -f $(KSERVE_VENV)/.installed-* && touch $@

test: setup kserve-env
	$(PY) -m pytest -q tests

# The seed's VGG16 and ResNet50 from the training CLI through the archive to TorchServe. `make test` runs VGG16
# only: ResNet50 adds minutes on a 2-core CPU. CI runs this target too.
.PHONY: test-seed-models
test-seed-models: setup
	TAGGER_SEED_MODELS=all $(PY) -m pytest -q -s tests/test_seed_models.py

# A synthetic data set of 22 classes (VOC and COCO annotations), deterministic by seed.
data: setup
	$(PY) -m training.synthetic --output $(DATA) $(ARGS)

# The data set check before training: layout, counts, box sizes, problems, and inspect.png (a contact sheet).
inspect: setup
	$(PY) -m training.inspect $(DATA) $(ARGS)

train: setup
	$(PY) -m training.train --data $(DATA) --output-dir $(OUTPUT) $(ARGS)

evaluate: setup
	$(PY) -m training.evaluate $(CHECKPOINT) $(DATA) $(ARGS)

# The CPU-sized demo model (not the seed's), retrained from nothing: generated data of varied sizes, 10-25 min of
# training on a 2-core CPU, then model/demo.pth (the shipped default) and its test mAP and tag recall.
demo-model: setup
	$(PY) -m training.demo --data $(DATA) --output-dir $(OUTPUT) $(ARGS)

# ---- Serving: archive, serve, stop, bench ----
# Paths and addresses are read from config.properties (archive, endpoint) by the scripts themselves.
.PHONY: archive serve stop bench

# The checkpoint to pack: CHECKPOINT=path, else the newest $(OUTPUT)/Epoch.N.pth, else the shipped demo model
# (model/demo.pth).
PACKED := $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT),--model-dir $(OUTPUT))

# The archive config.properties serves, from the checkpoint of PACKED.
archive: setup
	$(PY) -m scripts.make_archive $(PACKED)

# Everything from a fresh clone, without training: the archive (rebuilt unless it packs that very checkpoint,
# by path and sha256, and today's handler files and model config), then TorchServe. Safe to run again: a
# running server is kept (restarted when the archive changed) and its key renewed.
serve: setup
	$(PY) -m scripts.make_archive --if-changed $(PACKED)
	$(PY) -m scripts.serve start

stop: setup
	$(PY) -m scripts.serve stop

# `make serve`, then a page to try it in a browser (client/page.py) on http://127.0.0.1:8090/: photos dropped
# there come back with their boxes and tags; it adds the key itself (ARGS="--port 8091"). Ctrl-C stops the page.
.PHONY: page
page: serve
	$(PY) -m client.page $(ARGS)

# The bare model, a plain one-image-per-request server and the TorchServe of `make serve`, in one run.
bench: serve
	$(PY) -m benchmarks.bench $(ARGS)

# The baseline server and the TorchServe of `make serve` with another process keeping a core busy (a shared node).
.PHONY: bench-neighbour
bench-neighbour: serve
	$(PY) -m benchmarks.neighbour $(ARGS)

# ---- Accuracy on real photos (not a timed test, not part of `make test`) ----
.PHONY: bench-accuracy

# The demo recipe trained (12 epochs each) and scored on BCCD (downloaded into data/ on first use) and the raccoon
# photos: AP per class, mAP@0.5 and COCO mAP beside the README's figures. ARGS="--bccd-root PATH" takes a copy.
bench-accuracy: setup
	$(PY) -m benchmarks.accuracy $(ARGS)

# ---- Kubernetes: the storage layout of KServe's TorchServe runtime (README: Kubernetes / KServe) ----
.PHONY: kserve-bundle

# archive/kserve/{config,model-store}, from the checkpoint `make archive` would pack.
kserve-bundle: setup
	$(PY) -m scripts.kserve_bundle --output archive/kserve $(PACKED)

# ---- Chaos: the real TorchServe under load while it breaks (part of `make test` too; a few minutes) ----
# A worker killed (-9), the workers' busy record removed, a second TorchServe in the same TMPDIR, the front end
# restarted: each case prints one "chaos:" line with its figures and asserts its goal (tests/test_chaos.py).
.PHONY: chaos
chaos: setup
	$(PY) -m pytest -q -s tests/test_chaos.py

# ---- The served model on a GPU (benchmarks/gpu_serve.py; its docstring has the device calls) ----
# Here: ARGS=--stage downloads the wheels a GPU machine lacks into .gpu-wheels/; ARGS="--device cpu --models demo
# --batch-sizes 1,8 --clients 1,8 --seconds 3 --precisions float32" runs its CPU path, small.
.PHONY: bench-gpu-serve
bench-gpu-serve: setup
	$(PY) -m benchmarks.gpu_serve $(ARGS)

# ---- Security: the Java libraries inside TorchServe's front end ----
# One "name version" line per library bundled in the installed model-server.jar (ARGS=--json for a list), read
# from the jar itself, to feed a vulnerability scanner: pip's metadata does not list them.
.PHONY: ts-dependencies
ts-dependencies: setup
	$(PY) -m scripts.ts_dependencies $(ARGS)

# ---- The front door: nginx in front of `make serve`'s TorchServe, for serving other hosts (README: Front door) ----
# `make serve`, then deploy/front-door/nginx.conf.template rendered from config.properties into logs/front-door/
# and nginx started there (ARGS="--port 8443 --listen 0.0.0.0" by default). Needs nginx (apt-get install nginx).
.PHONY: front-door front-door-stop
front-door: serve
	$(PY) -m scripts.front_door start $(ARGS)

front-door-stop: setup
	$(PY) -m scripts.front_door stop $(ARGS)
