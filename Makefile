# dgclab: two commands on a fresh machine.
#   make demo   set up .venv from nothing, fetch Fashion-MNIST, run the main job
#   make test   set up if needed, then every test (notebooks included)
# Everything lives in .venv in the repo root; nothing else is installed by hand.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.dgclab-installed
export MPLBACKEND ?= Agg

.PHONY: setup data browser demo test bench clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# constraints.txt pins a tested torch/torchvision pair; pyproject.toml keeps ranges.
	# No pip cache: torch and its CUDA libraries take several GB already, twice with a cache.
	$(PY) -m pip install --no-cache-dir -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

data: setup
	$(PY) -m dgclab data fashion-mnist --root data

demo: setup data
	$(PY) -m dgclab demo

# The real-browser test drives Debian's chromium (no browser download); as root we install it,
# elsewhere the test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		(apt-get install -y -q chromium >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) ; } || \
		echo "chromium is not installed and could not be: the browser test will be skipped"

# Notebooks run in fast mode (DGCLAB_FAST=1: less data, fewer epochs); --nbval-lax compares
# only the cells marked NBVAL_CHECK_OUTPUT, whose outputs fast and full mode share. Then every
# docstring example of the package runs as a doctest (the names they share: conftest.py).
test: setup browser
	DGCLAB_FAST=1 $(PY) -m pytest tests notebooks --nbval-lax
	$(PY) -m pytest --doctest-modules dgclab -q

bench: setup
	$(PY) -m dgclab.bench layer --variants

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
