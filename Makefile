# The two commands of the README: `make demo` and `make test`. Each creates the virtual
# environment .venv on first use and installs the project into it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow docs bench bench-scale clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/rifscale demo --overwrite

test: $(STAMP)
	bash scripts/ensure-browser.sh
	$(BIN)/python -m pytest -m "not slow" -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m "slow" -q

# The documentation site (Sphinx, docs/conf.py) in docs/_build/html; every warning is an
# error (-W; --keep-going reports them all) and every cross-reference must resolve (-n).
docs: $(STAMP)
	$(BIN)/python -m sphinx -b html -W --keep-going -n -q docs docs/_build/html

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_engine.py
	$(BIN)/python benchmarks/bench_retrain.py --data demo

# The peers (scikit-learn, statsmodels, dask-ml) live in their own environment: dask-ml
# pulls in sparse and numba, which would slow rifscale's own imports if installed beside it.
PEERS := .venv-peers
$(PEERS)/.installed: pyproject.toml
	$(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install --quiet --upgrade pip
	$(PEERS)/bin/python -m pip install --quiet -e ".[dev,bench]"
	touch $(PEERS)/.installed

# rifscale is timed as a user installs it (`pip install rifscale`, no extras): the test
# extras bring xarray, which dask.array imports whenever it is installed (+0.7 s per start).
RUNENV := .venv-run
$(RUNENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(RUNENV)
	$(RUNENV)/bin/python -m pip install --quiet --upgrade pip
	$(RUNENV)/bin/python -m pip install --quiet -e .
	touch $(RUNENV)/.installed

bench-scale: $(RUNENV)/.installed $(PEERS)/.installed
	$(PEERS)/bin/python benchmarks/bench_scale.py --rifscale $(RUNENV)/bin/rifscale $(ARGS)

clean:
	rm -rf $(VENV) $(PEERS) $(RUNENV) rifscale-demo docs/_build
