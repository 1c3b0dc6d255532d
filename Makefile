# Two commands for a fresh machine (see README):
#   make demo   set up, then run the main job on embedded defaults (SQLite, in-process Prefect)
#   make test   set up everything the tests need (incl. a private PostgreSQL), run the whole suite
# Each target installs what it needs into .venv; rerunning skips what is already done.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: demo test bench chaos clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Core install: the store, the CLI, Prefect. No torch.
$(VENV)/.core: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

# Everything: torch first (a CPU build; otherwise NeMo's resolver pulls a multi-GB CUDA build),
# then NeMo and the test tools.
$(VENV)/.all: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[worker,dev,dataset]"
	touch $@ $(VENV)/.core

# Tools the speech fixtures are built with (scripts/make_tiny_models.py, checked by a test), the
# headless browser tests/test_ui.py opens the Prefect UI in, and FFmpeg's shared libraries, which
# torchcodec (the `dataset` extra) decodes `datasets`' Audio feature with.
$(VENV)/.sysdeps: | $(BIN)/python
	@if ! command -v espeak-ng >/dev/null || ! command -v sox >/dev/null || ! command -v chromium >/dev/null \
	    || ! command -v ffmpeg >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq espeak-ng sox chromium ffmpeg >/dev/null; \
	  else \
	    echo "make test needs espeak-ng, sox, chromium and ffmpeg: sudo apt-get install espeak-ng sox chromium ffmpeg (or brew install espeak-ng sox chromium ffmpeg)"; \
	    exit 1; \
	  fi; \
	fi
	touch $@

demo: $(VENV)/.all
	bash examples/demo.sh

# Four test processes: much of the suite waits (heartbeats, a stopped database, slow hosts), so
# it runs side by side even on two cores. PYTEST_WORKERS=0 runs it in one process.
PYTEST_WORKERS ?= 4

test: $(VENV)/.all $(VENV)/.sysdeps
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

bench: $(VENV)/.all
	$(BIN)/python bench/store_bench.py

# The 30-minute chaos soak (issue 21); bench/chaos.py --help for the knobs.
chaos: $(VENV)/.all $(VENV)/.sysdeps
	$(BIN)/python bench/chaos.py --minutes 30 --episodes 300 --seed 1 --compare

clean:
	rm -rf $(VENV) dataset podcastpile.db podcastpile.db-wal podcastpile.db-shm
