# Every target runs inside .venv, which `make setup` builds from requirements.txt (idempotent).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum requirements.txt | cut -c1-12)

DATA ?= data/synthetic
OUTPUT ?= model
ARGS ?=

.PHONY: setup test data train evaluate

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
