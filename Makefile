# Two commands on a fresh machine: `make run` and `make test`. Each sets up .venv itself.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_WORKERS ?= 2

.PHONY: setup run test unit integration e2e lint typecheck bench bench-peers bench-mme bench-workers clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/python examples/quickstart.py

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples tools

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit -q

integration: $(STAMP)
	$(BIN)/python -m pytest tests/integration -q -n $(PYTEST_WORKERS)

e2e: $(STAMP)
	$(BIN)/python -m pytest tests/e2e -q

test: $(STAMP) lint typecheck
	$(BIN)/python -m pytest tests -q -n $(PYTEST_WORKERS) --dist loadfile

bench: $(STAMP)
	$(BIN)/python bench/invoke_latency.py

# Side by side with the peer servers (installed into their own venvs by the benchmark), a PyTorch MLP and a
# payload sweep. torch is only for this target: the CPU build, pinned so pip never pulls the CUDA one.
bench-peers: $(STAMP)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python bench/peers_bench.py

# 1,000 small models behind one multi-model endpoint whose memory holds about 50, Zipf traffic, 3 minutes.
bench-mme: $(STAMP)
	$(BIN)/python bench/mme_scale.py

# One instance with one worker process, with two (SAGEMAKER_MODEL_SERVER_WORKERS), and two instances.
bench-workers: $(STAMP)
	$(BIN)/python bench/server_workers.py

clean:
	rm -rf $(VENV) modelhost-data .pytest_cache .mypy_cache .ruff_cache
