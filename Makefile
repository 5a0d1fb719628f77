# The two commands of the README. Both create .venv and install what is needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fedmed-installed

.PHONY: demo test test-deploy fuzz install lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU machines: the local CPU wheel. A GPU hospital installs its CUDA torch instead.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/fedmed demo

# The import contracts of pyproject.toml first (lint-imports, seeing clients/, server/, deid/).
test: $(STAMP)
	$(BIN)/python tests/lint_imports.py --no-logo
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf .fedmed runs

# The slow deployment scenarios (poisoned update, node killed mid-round, coordinator
# restart) with real Flower processes on loopback, and a simulation on a real two-node
# Ray cluster (`fedmed run --ray-address`, ~75 s). The loopback acceptance run is
# `test`'s, not run twice. CI (.ci/run) runs this after `test`.
test-deploy: $(STAMP)
	FEDMED_DEPLOY_SLOW=1 $(BIN)/python -m pytest tests/test_deploy_loopback.py tests/test_deploy_memory_state.py tests/test_ray_cluster.py \
		--deselect tests/test_deploy_loopback.py::test_two_rounds_with_secagg_and_dp_over_tls

# The parser fuzz tests of `test` with the long profile: 1000 examples per parser
# (FEDMED_FUZZ_EXAMPLES=N for more). Derandomised, no example database.
fuzz: $(STAMP)
	FEDMED_FUZZ=long $(BIN)/python -m pytest tests/test_fuzz_parsers.py -W ignore::UserWarning --hypothesis-show-statistics
