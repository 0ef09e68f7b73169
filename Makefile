# Two commands for a newcomer: `make demo` (the main job) and `make test` (lint + tests).
# Both create .venv on first use. Without an NVIDIA GPU the CPU build of torch is installed
# first (torch==2.13.0 is found locally on our machines); with `nvidia-smi` working, pip takes
# the CUDA build. Override with e.g. `make TORCH_INDEX=https://download.pytorch.org/whl/cpu`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
DEMO_OUT ?= data/local/demo
DEMO_ARGS ?=
STAMP := $(VENV)/.mimcast-installed
BIN := $(VENV)/bin

.PHONY: demo test lint format install clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	if nvidia-smi >/dev/null 2>&1; then \
	  echo "NVIDIA GPU found: pip resolves the CUDA build of torch"; \
	else \
	  $(BIN)/pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"; \
	fi
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

# The main job on the embedded default: synthetic storms -> cube -> nowcast -> evaluation.
demo: $(STAMP)
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(BIN)/mimcast demo --out $(DEMO_OUT) $(DEMO_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean-venv:
	rm -rf $(VENV)
