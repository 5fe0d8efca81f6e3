# make run  — set up (venv + requirements) and start the bridge on embedded defaults
# make test — set up (venv + dev requirements + system packages) and run every test
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PORT   ?= 5000

.PHONY: run test worker bench system-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.run-deps: requirements.txt | $(BIN)/python
	$(BIN)/pip install -q -r requirements.txt
	touch $@

$(VENV)/.dev-deps: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@ $(VENV)/.run-deps

run: $(VENV)/.run-deps
	PORT=$(PORT) $(BIN)/gunicorn -c gunicorn.conf.py --bind 127.0.0.1:$(PORT) bridge.wsgi:app

worker: $(VENV)/.run-deps
	PROMETHEUS_MULTIPROC_DIR=$${PROMETHEUS_MULTIPROC_DIR:-var/metrics} $(BIN)/flask --app bridge worker

system-deps:
	bash scripts/system-deps.sh

test: $(VENV)/.dev-deps system-deps
	$(BIN)/python -m pytest

bench: $(VENV)/.dev-deps
	bash bench/run.sh

clean:
	rm -rf $(VENV) var .pytest_cache
