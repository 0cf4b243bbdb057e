# stembot: `make demo` separates a song; `make test` runs every check CI runs; `make check` the fast tier.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED ?= ../shared
DEMO_INPUT ?= $(SHARED)/audio/songs/bytedance_mss_vocals_accompaniment_10s.mp3
DEMO_STEMS ?= vocals karaoke
DEMO_OUT ?= separated
# The shared test weights when they are there; otherwise demucs downloads the official ones.
export STEMBOT_MODEL_REPO ?= $(if $(wildcard $(SHARED)/models/htdemucs),$(abspath $(SHARED)/models/htdemucs),)
# pytest-xdist workers. Each takes its own Redis db, STEMBOT_TEST_REDIS_DB (12) + its index,
# and Redis has 16: 3 leaves db 15 to the benchmarks. Three on the 2-core box, not two: a
# test that waits on a worker, a bot or a browser leaves its core to the others (the full
# suite took 11 min 4 s at -n 3 against 12 min 28 s at -n 2, the same 20.5 CPU-min).
JOBS ?= 3
PYTEST := $(PY) -m pytest -q -n $(JOBS) --dist worksteal

.PHONY: setup setup-dev system demo test check lint unit bench
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

# Every test. pytest's status 5 (nothing collected) fails too, with a word on why.
unit: setup-dev system
	$(PYTEST) --durations=15 || { rc=$$?; [ $$rc -ne 5 ] || echo "make unit: no test ran" >&2; exit $$rc; }

test: lint unit

# The fast tier, for the edit-test loop: no test marked slow (the real weights, long runs).
check: setup-dev system
	$(PYTEST) -m "not slow"

bench: setup-dev system
	$(PY) bench/separation.py
