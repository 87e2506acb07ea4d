# `make` (or `make test`) installs everything the tests need and runs every check CI runs:
# lint, types, the test suite (browser tests included) and the executable build + smoke test.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.DEFAULT_GOAL := test
.PHONY: test install system-deps lint typecheck unit build serve bench clean

test: install lint typecheck unit build

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python system-deps
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'

# Debian's Chromium drives the browser tests (never a downloaded browser); libmagic is loaded
# by the WhatsApp library at import.
system-deps:
	@if ! command -v chromium >/dev/null 2>&1 || ! ldconfig -p | grep -q 'libmagic.so.1'; then \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium libmagic1 >/dev/null; \
	fi

lint:
	$(BIN)/ruff check .

typecheck:
	$(BIN)/mypy

unit:
	$(BIN)/pytest -q

build:
	PATH="$(CURDIR)/$(BIN):$$PATH" bash packaging/build.sh

serve: install
	$(BIN)/whatsdex serve

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf build dist .pytest_cache .mypy_cache .ruff_cache
