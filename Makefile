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

.PHONY: setup system demo test lint unit bench
.DEFAULT_GOAL := demo

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[all,dev]'
	touch $@

setup: $(VENV)/.installed

system:
	bash .ci/system-deps

demo: setup system
	$(VENV)/bin/stembot separate "$(DEMO_INPUT)" --stems "$(DEMO_STEMS)" -o $(DEMO_OUT)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

unit: setup system
	$(PY) -m pytest -q

test: lint unit

bench: setup system
	$(PY) bench/separation.py
