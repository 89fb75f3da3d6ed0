# fedproof: `make demo` runs the end-to-end demo, `make test` the test suite; both set up first.
# Set-up is idempotent: the venv is reinstalled only when pyproject.toml changes, the npm packages
# (solc, anvil) only when contracts/package-lock.json does.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fedproof-setup
NPM    := contracts/node_modules/.fedproof-npm

export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1

.PHONY: setup demo test bench data tools clean

setup: $(STAMP) $(NPM) data tools

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# torch first, pinned: this machine has its CPU build on disk; an open range would pull a CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

# The contract compiler and the devnet: solc and anvil, pinned in contracts/package-lock.json.
$(NPM): contracts/package-lock.json
	npm ci --prefix contracts --no-audit --no-fund --loglevel=error
	touch $@

# Debian's dataset-fashion-mnist, when apt is there and the data is not found anywhere fedproof looks.
data: $(STAMP)
	@if $(BIN)/python -c "import fedproof.core.data as d; d.locate()" 2>/dev/null; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	else \
	  echo "Fashion-MNIST not found and apt-get is unavailable: see README (Data) to fetch it by hand."; \
	fi

# Debian's prometheus (promtool checks the alerting rules; the monitoring test scrapes fedproof with it).
tools:
	@if command -v promtool >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -qq prometheus >/dev/null || \
	  { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq prometheus >/dev/null; }; \
	else \
	  echo "prometheus (promtool) not found and apt-get is unavailable: the monitoring tests will say how to get it."; \
	fi

# Each demo simulates new data holders (their lifetime privacy budgets live in the run directory's client-state/).
demo: setup
	$(BIN)/fedproof simulate --deploy --run-dir runs/demo-$$(date +%Y%m%d-%H%M%S)

test: setup
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/simulation.py
	$(BIN)/python benchmarks/dp_overhead.py
	$(BIN)/python benchmarks/privacy_utility.py
	$(BIN)/python benchmarks/he_overhead.py
	$(BIN)/python benchmarks/ledger_costs.py
	$(BIN)/python benchmarks/tabular.py
	$(BIN)/python benchmarks/deploy.py
	$(BIN)/python benchmarks/drift.py
	cd benchmarks && ../$(BIN)/python fleet.py --rounds 100
	$(BIN)/python benchmarks/deployment.py

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
