# dgclab: two commands on a fresh machine.
#   make demo   set up .venv from nothing, fetch Fashion-MNIST, run the main job
#   make test   set up if needed, then every test (notebooks included)
# Everything lives in .venv in the repo root; nothing else is installed by hand.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.dgclab-installed
export MPLBACKEND ?= Agg

.PHONY: setup data demo test bench clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# constraints.txt pins a tested torch/torchvision pair; pyproject.toml keeps ranges.
	$(PY) -m pip install -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

data: setup
	$(PY) -m dgclab data fashion-mnist --root data

demo: setup data
	$(PY) -m dgclab demo

# Notebooks run in fast mode (DGCLAB_FAST=1: less data, fewer epochs); --nbval-lax compares
# only the cells marked NBVAL_CHECK_OUTPUT, whose outputs fast and full mode share.
test: setup
	DGCLAB_FAST=1 $(PY) -m pytest tests notebooks --nbval-lax

bench: setup
	$(PY) -m dgclab.bench layer --variants

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
