# The two commands a new machine needs:  make demo   and   make test
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
HOST   ?= 127.0.0.1
PORT   ?= 8000

TEST_DB_URL     ?= postgres://postgres@127.0.0.1:5432/maskloop
TEST_BROKER_URL ?= redis://127.0.0.1:6379/15

# mypy's Django plugin loads config.settings, which with DEBUG off wants a real secret key: it
# gets one that only types are read with. Its cache misses a changed type in settings.py (the
# plugin reads settings outside mypy's dependency graph), so each version of that file gets a
# cache of its own.
MYPY := DJANGO_SECRET_KEY=mypy-reads-only-the-types-of-the-settings-this-is-no-deployment-key \
	$(VENV)/bin/mypy --cache-dir .mypy_cache/settings-$(shell sha1sum < config/settings.py | cut -c1-12)

.PHONY: demo test lint venv worker clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "maskloop needs Python 3.11 or newer"'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	@rm -f $(VENV)/.installed-*; touch $(STAMP)

venv: $(STAMP)

## demo: set up and run the platform on SQLite + the filesystem broker (no PostgreSQL or Redis)
demo: $(STAMP)
	@bash scripts/demo.sh $(HOST) $(PORT)

## test: make sure PostgreSQL, Redis and Chromium are there, then run ruff (lint and format), import-linter, mypy and the whole suite
test: $(STAMP)
	@bash scripts/ensure-services.sh
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(MYPY)
	DATABASE_URL=$(TEST_DB_URL) CELERY_BROKER_URL=$(TEST_BROKER_URL) $(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(MYPY)

clean:
	rm -rf var artifacts .pytest_cache .mypy_cache
