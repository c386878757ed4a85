# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Everything installs into .venv (Python 3.11, megatron-core 0.16.1, CPU torch 2.13.0).
# `make test` also runs a representative subset of the training, checkpoint, dataset and export tests
# (tests/conftest.py:MCORE_MATRIX) on megatron-core 0.19.2 under Python 3.12 (the NGC line), in a
# venv cached outside the checkout (first build: ~2 min, 1.4 GB).

PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
# The first python3.12 that runs (a pyenv shim may exist without 3.12 being active).
PYTHON312 ?= $(shell for p in $(HOME)/.pyenv/versions/3.12*/bin/python3.12 /usr/local/bin/python3.12 /usr/bin/python3.12; do [ -x $$p ] && $$p -c '' 2>/dev/null && echo $$p && break; done)
MCORE019 ?= megatron-core==0.19.2
CACHE ?= $(HOME)/.cache/megatron-srp
REQ_HASH := $(shell cat requirements.txt requirements-dev.txt | sha256sum | cut -c1-12)
VENV312 ?= $(CACHE)/venv-py312-mcore0.19.2-$(REQ_HASH)
PYTEST_ARGS ?=

.PHONY: install demo demo-pretrain test test-mcore016 test-mcore019 test-gpu bench clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

# The main job: MedSafetyWorld's ablation (filter and srp, one seed) end to end, then its table.
demo: install
	$(PY) tools/medsafetyworld.py ablate recipes/medsafetyworld/tiny_cpu.yaml

# The engine alone: 50 steps of a tiny GPT on mock data.
demo-pretrain: install
	$(PY) tools/pretrain.py recipes/tiny_cpu.yaml

test: test-mcore016 test-mcore019

test-mcore016: install
	$(PY) -m pytest -q -rs $(PYTEST_ARGS) tests

# No file prerequisites: the path is keyed on the requirements' hash, and a fresh clone's newer
# file times must not trigger a rebuild of the cached environment.
$(VENV312)/.installed:
	@test -n "$(PYTHON312)" || { echo "python3.12 not found (set PYTHON312=...)"; exit 1; }
	rm -rf $(VENV312)
	$(PYTHON312) -m venv $(VENV312)
	$(VENV312)/bin/python -m pip install -q $(TORCH) $(MCORE019)
	$(VENV312)/bin/python -m pip install -q -r requirements.txt -r requirements-dev.txt
	touch $@

test-mcore019: $(VENV312)/.installed
	$(VENV312)/bin/python -c "import megatron.core as m, sys; print('megatron-core', m.__version__, 'python', sys.version.split()[0])"
	PYTHONPATH=$(CURDIR) $(VENV312)/bin/python -m pytest -q -m mcore_matrix $(PYTEST_ARGS) tests/training tests/data tests/export

# The GPU leg (tests/gpu, marker gpu) on a GPU node, with the Python that has CUDA torch, Transformer
# Engine and megatron-core (an NGC PyTorch container): `make test-gpu GPU_PYTHON=python`. The CPU legs
# above hide the GPUs from themselves. tools/gpu_check.sh runs this leg and the throughput check as one command.
GPU_PYTHON ?= python3
test-gpu:
	PYTHONPATH=$(CURDIR) $(GPU_PYTHON) -m pytest -q -rs -m gpu $(PYTEST_ARGS) tests/gpu

bench: install
	$(PY) bench/cpu_step.py --compare

clean:
	rm -rf $(VENV) runs .pytest_cache
