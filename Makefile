# stembot: `make demo` separates a song; `make test` runs every check CI runs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED ?= ../shared
DEMO_INPUT ?= $(SHARED)/audio/songs/bytedance_mss_vocals_accompaniment_10s.mp3
DEMO_STEMS ?= vocals karaoke
DEMO_OUT ?= separated
# The shared test weights when they are there; otherwise demucs downloads the official ones.
export STEMBOT_MODEL_REPO ?= $(if $(wildcard $(SHARED)/models/htdemucs),$(abspath $(SHARED)/models/htdemucs),)

.PHONY: setup setup-dev system demo test lint unit bench
.DEFAULT_GOAL := demo

# One venv, two stamps: the demo needs only what stembot runs with (`.[all]`); the checks
# add the dev tools on top (`.[all,dev]`), so `make test` after `make demo` installs just those.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[all]'
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[all,dev]'
	touch $@

setup: $(VENV)/.installed

setup-dev: $(VENV)/.installed-dev

system:
	bash .ci/system-deps

demo: setup system
	$(VENV)/bin/stembot separate "$(DEMO_INPUT)" --stems "$(DEMO_STEMS)" -o $(DEMO_OUT)
	@echo "stembot is installed in $(VENV): run $(VENV)/bin/stembot, or 'source $(VENV)/bin/activate' first"

lint: setup-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

unit: setup-dev system
	$(PY) -m pytest -q

test: lint unit

bench: setup-dev system
	$(PY) bench/separation.py
