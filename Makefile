# HALI developer entry points. Quick start: `make up` (then open the printed URL), `make test`.
PYTHON ?= python3
VENV_PY := .venv/bin/python
BENCH ?= $(wildcard bench/bench_*.py)

.PHONY: install up down status test unit bench docker-test

install:  ## redis-server, .venv (project + tests), .venv-ls (Label Studio); idempotent
	bash scripts/install.sh

up: install  ## start redis, Label Studio, the backend and a worker; preprocess the demo slide
	$(VENV_PY) scripts/stack.py up

down:  ## stop everything `up` started
	$(PYTHON) scripts/stack.py down

status:
	$(PYTHON) scripts/stack.py status

test: install  ## unit and integration tests (integration starts its own redis and Label Studio)
	$(VENV_PY) -m pytest -q tests

unit: install  ## unit tests only: seconds, no services
	$(VENV_PY) -m pytest -q tests/unit

bench: install  ## every bench/bench_*.py in turn (or BENCH="bench/bench_webhook.py ...")
	@set -e; for script in $(BENCH); do echo "==> $$script"; $(VENV_PY) $$script; done

docker-test:  ## build the images, compose up, preprocess the demo slide, label until the model version rises, down -v
	bash docker/test.sh
