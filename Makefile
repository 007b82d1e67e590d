# Every target runs inside .venv, which `make setup` builds from requirements.txt (idempotent).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum requirements.txt | cut -c1-12)

DATA ?= data/synthetic
OUTPUT ?= model
ARGS ?=

.PHONY: setup test data train evaluate demo-model

setup: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	rm -f $(VENV)/.installed-* && touch $@

test: setup
	$(PY) -m pytest -q tests

# A synthetic data set of 22 classes (VOC and COCO annotations), deterministic by seed.
data: setup
	$(PY) -m training.synthetic --output $(DATA) $(ARGS)

train: setup
	$(PY) -m training.train --data $(DATA) --output-dir $(OUTPUT) $(ARGS)

evaluate: setup
	$(PY) -m training.evaluate $(CHECKPOINT) $(DATA) $(ARGS)

# The CPU-sized demo model (not the seed's): generated data, ~10 minutes of training, test mAP printed.
demo-model: setup
	$(PY) -m training.demo --data $(DATA) --output-dir $(OUTPUT) $(ARGS)

# ---- Serving: archive, serve, stop ----
ARCHIVE := archive/tagger.mar
MODEL_CONFIG := model/model-config.yaml

.PHONY: archive serve stop

# archive/tagger.mar from the newest model/Epoch.N.pth, or from CHECKPOINT=path.
archive: setup
	$(PY) -m scripts.make_archive --output $(ARCHIVE) --model-config $(MODEL_CONFIG) \
		$(if $(CHECKPOINT),--checkpoint $(CHECKPOINT),--model-dir $(OUTPUT))

# Rebuilt by `make serve` only when a checkpoint, a handler file or the model config is newer.
$(ARCHIVE): $(wildcard $(OUTPUT)/Epoch.*.pth) $(wildcard handler/*.py) $(MODEL_CONFIG)
	$(PY) -m scripts.make_archive --output $@ --model-config $(MODEL_CONFIG) --model-dir $(OUTPUT)

# Everything from a fresh clone: the demo model when no checkpoint exists, the archive, TorchServe.
# Safe to run again: a running server is kept (restarted when the archive changed) and its key renewed.
serve: setup
	@ls $(OUTPUT)/Epoch.*.pth >/dev/null 2>&1 || $(MAKE) --no-print-directory demo-model
	@$(MAKE) --no-print-directory $(ARCHIVE)
	$(PY) -m scripts.serve start --config config.properties

stop: setup
	$(PY) -m scripts.serve stop
