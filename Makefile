# The two commands of the README: `make demo` and `make test`. Each sets everything up first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_PACKAGES := dataset-fashion-mnist chromium ffmpeg fonts-dejavu-core
PYTEST_ARGS ?=

.PHONY: setup system-deps demo test test-slow test-all lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# Debian packages the tests and the demo use (Fashion-MNIST files, Chromium for the web page, ffmpeg).
system-deps:
	@if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi; \
	else echo "note: not root or no apt-get; install $(APT_PACKAGES) yourself for the full suite"; fi

setup: system-deps $(STAMP)

demo: setup
	$(BIN)/imagerec demo

test: setup
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

# The tests marked slow (multi-worker serving and training, Ray, heavy backbones, long fuzz runs); CI runs them
# after `make test`. pytest exits 5 when nothing is collected (every slow test filtered out): not a failure.
# Each backbone's export row runs in its own pytest process: a row peaks at ~10 GB (ResNet50V2's int8
# calibration) and memory the allocator keeps after one row added up to 22 GB in one process (OOM-killed in CI).
EVERY_MODEL := tests/export/test_every_model.py
BACKBONES = $$($(BIN)/python -c "from imagerec.models.registry import list_models as m; print(*(s.name for s in m() if s.kind == 'backbone'))")
test-slow: setup
	$(BIN)/python -m pytest -q -m slow --durations=20 --deselect $(EVERY_MODEL) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "note: no slow tests collected"; elif [ $$rc -ne 0 ]; then exit $$rc; fi; \
	for row in $(BACKBONES); do \
	  $(BIN)/python -m pytest -q -m slow $(EVERY_MODEL) -k "$$row" $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -ne 0 ] && [ $$rc -ne 5 ]; then exit $$rc; fi; \
	done

test-all: setup
	$(BIN)/python -m pytest -q -m "slow or not slow" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
