# Two entry points for a fresh machine: `make demo` runs the main job, `make test` passes the tests.
# Both create .venv and install what they need. Without a GPU (no nvidia-smi) torch is pinned to the
# CPU build first, so pip never downloads the CUDA packages.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_CPU ?= torch==2.13.0

.PHONY: setup demo test lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q "$(TORCH_CPU)"; fi
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

# Validate (for 2 processes) before anything starts, then pretrain on 2 local processes.
demo: setup
	WORLD_SIZE=2 $(PY) -m pretrain.config configs/pretrain/default.yaml > /dev/null
	$(VENV)/bin/torchrun --nproc_per_node 2 -m pretrain configs/pretrain/default.yaml

test: setup
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache
