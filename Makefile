PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data
RUNS ?= runs

.PHONY: setup test lint format demo bench clean

$(BIN)/sonofed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $@

setup: $(BIN)/sonofed ## create .venv and install sonofed with its dev tools

lint: setup ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint ## lint, then the whole test suite
	$(BIN)/pytest

demo: setup ## the main job end to end, on the synthetic phantom
	PATH=$(abspath $(BIN)):$$PATH ./scripts/demo.sh

bench: setup ## benchmarks (JSON and markdown under bench/results); the model and federation ones need real data and take long
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m bench.registry --data $(DATA) --out bench/results
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m bench.release --out bench/results
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m bench.recipes --data $(DATA) --out bench/results
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m bench.model --data $(DATA) --out bench/results
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m bench.federation --data $(DATA) --out bench/results

clean:
	rm -rf $(RUNS) .pytest_cache
