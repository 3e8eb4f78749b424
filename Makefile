# dispsafe: two commands for a newcomer — `make reproduce` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU build of torch (on a machine with a GPU, a CUDA build already in the venv is kept).
TORCH_SPEC ?= torch==2.13.0
# e.g. TORCH_INDEX=https://download.pytorch.org/whl/cpu to get the CPU wheel on Linux from PyTorch's index.
TORCH_INDEX ?=
# llama-cpp-python is built from source: the library only (what the llamacpp engine loads), on every core.
LLAMA_CPP_CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_CURL=OFF
# The offline mirror of public datasets, when this checkout sits beside one.
DISPSAFE_DATA ?= $(if $(wildcard ../shared/datasets),$(abspath ../shared/datasets),)
export DISPSAFE_DATA

.PHONY: install test nbval ui-check lint format reproduce benchmark benchmark-distill benchmark-baselines benchmark-costs benchmark-generalise benchmark-harm-probe benchmark-load benchmark-device mutation lab clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements-embedded.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	@if ! $(PY) -c "import torch" 2>/dev/null; then \
	  if command -v nvidia-smi >/dev/null 2>&1; then $(PIP) install torch; \
	  else $(PIP) install $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"; fi; \
	fi
	CMAKE_ARGS="$(LLAMA_CPP_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PIP) install --quiet -e ".[dev]"
	$(PIP) install --quiet --no-deps -r requirements-embedded.txt
	touch $@

test: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest
	$(MAKE) --no-print-directory nbval

# The cells of notebook 01 marked NBVAL_CHECK_OUTPUT must reproduce their committed outputs (exact values of the
# theory); cells marked NBVAL_SKIP (the real model) are left to the smoke run above.
nbval: install
	tmp=$$(mktemp -d) && DISPSAFE_FIGURES=$$tmp DISPSAFE_RESULTS=$$tmp $(PY) -m pytest -p no:cacheprovider -q \
	  --nbval-lax --nbval-current-env --nbval-sanitize-with notebooks/nbval_sanitize.cfg notebooks/01_tv_bound.ipynb

# Notebook 06 in a real browser: JupyterLab headless + Debian's Chromium driven by Playwright; runs the notebook
# (smoke sizes), uses the prober and saves figures/06_prober.png. Without Chromium it says SKIPPED and exits 77,
# which fails make unless UI_CHECK_OPTIONAL=1 (CI sets it where Chromium cannot be installed): `apt-get install chromium`.
ui-check: install
	@$(PY) scripts/ui_check.py; rc=$$?; \
	if [ $$rc -eq 77 ] && [ -n "$(UI_CHECK_OPTIONAL)" ]; then echo "ui-check SKIPPED: no Chromium (UI_CHECK_OPTIONAL set)"; exit 0; fi; \
	exit $$rc

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/lint-imports

format: install
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

reproduce: install
	$(PY) -m dispsafe_nb.notebooks.reproduce

benchmark: install
	$(PY) benchmarks/foundation.py

benchmark-distill: install
	$(PY) benchmarks/distill.py

# Notebook 04's comparison over 3 seeds -> results/baselines.json (every method and objective, best learning rate
# per group, the paper's orderings judged on the seed means).
benchmark-baselines: install
	$(PY) benchmarks/baselines.py

# On-device costs and the fast engine, side by side in one run -> results/bench.json (targets judged there).
benchmark-costs: install
	$(PY) benchmarks/costs.py

# A student distilled at the paper's data scale (5,000 prompts, one epoch at effective batch 32) against the dual
# system on out-of-distribution sets -> results/generalise.json (see the README for its wall time).
benchmark-generalise: install
	$(PY) benchmarks/generalise.py

# Does the frozen model separate what the dual system refuses? Linear probes per layer on the same 5,000-prompt mix
# (teacher samples and dual records cached by benchmark-generalise), the probe system scored like a student ->
# results/harm_probe.json.
benchmark-harm-probe: install
	$(PY) benchmarks/harm_probe.py

# Memory under load: peak resident memory and wall time of probe() and evaluate on 50-800 long prompts and 800 short
# ones, each in its own process -> results/load.json (targets: flat in the number of prompts, under 4 GB; resumable).
benchmark-load: install
	$(PY) benchmarks/load.py

# llama.cpp (the GGUF's 4-bit kernels) against PyTorch: verdict agreement per system and set, speed (its first
# run here took about 40 minutes beside other jobs; a rerun resumes its evaluations from the journals).
benchmark-device: install
	$(PY) benchmarks/device.py --limit 100 --out benchmarks/reports/device_cpu.json

# Mutation score of the maths, scoring, objectives, judges, classifier statistics and training's loss/step code with
# their fast unit tests (tools/mutation/mutants.toml says what; mutmut on a scratch copy in build/mutation; 10-15
# minutes on 2 cores) -> results/mutation.json.
mutation: install
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) tools/mutation/run.py

lab: install
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf results/ .pytest_cache .ruff_cache
