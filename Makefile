# Two entry points for a fresh machine: `make demo` runs the main job, `make test` passes the tests.
# Both create .venv and install what they need. Without a GPU (no nvidia-smi) torch is pinned to the
# CPU build first, so pip never downloads the CUDA packages.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_CPU ?= torch==2.13.0

.PHONY: setup demo test browser lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q "$(TORCH_CPU)"; fi
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

# Pretrain on 2 local CPU processes through the launcher (it validates before anything starts).
demo: setup
	$(PY) -m launch local configs/pretrain/default.yaml --cluster configs/cluster/local-cpu.yaml

# Two workers for the bulk (most tests wait on process start-up, not on both cores), then the drills
# that time real timeouts, alone so that a busy machine cannot fake a hang.
test: setup browser
	rc=0; $(PY) -m pytest -n 2 --dist worksteal -m "not serial" --durations=25 || rc=$$?; \
	$(PY) -m pytest -m serial || rc=$$?; exit $$rc

# The dashboard test drives Debian's Chromium headless; install it where we may (root, apt-get).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	  else echo "chromium is not installed and cannot be here (needs root and apt-get): the dashboard test will skip"; fi; }

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache
