# bioimp — the two commands: `make run` and `make test`. Both set up .venv from scratch if needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup run test lint bench compare clean test-kill-long test-fit-coverage soak

# (Re)install whenever pyproject.toml changes. Only python3 with venv is assumed on the machine.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# The dashboard test drives Debian's Chromium (no browser download at run time: Playwright is pointed at
# /usr/bin/chromium). Installed once through apt, with sudo when not root.
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	$$( [ "$$(id -u)" -eq 0 ] || echo sudo ) apt-get update -qq
	$$( [ "$$(id -u)" -eq 0 ] || echo sudo ) env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends chromium >/dev/null

# Each run is a new batch with its own record (a batch record is never overwritten): a directory per run.
run: setup
	$(BIN)/bioimp run --out runs/cho_fedbatch-$$(date -u +%Y%m%dT%H%M%SZ)

# The full 14-day comparison on the default CHO scenario (several minutes; docs/results.md): the same
# plant (seed 7) under the NMPC, the best daily bolus, the open-loop optimum and the oracle.
compare: setup
	$(BIN)/bioimp compare twin/scenarios/cho_fedbatch.toml --controllers nmpc,bolus,openloop,oracle \
		--out runs/compare-$$(date -u +%Y%m%dT%H%M%SZ)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

# Tests and benchmarks in quick mode: every benchmark runs once as a test, budgets are not asserted.
test: lint $(CHROMIUM)
	$(BIN)/pytest -q --benchmark-disable tests bench

# Full benchmarks: repeated rounds, budgets asserted, JSON report in bench/report.json.
bench: setup  # the table is printed even when a budget fails; the exit status is pytest's
	$(BIN)/pytest -q bench --benchmark-only --benchmark-json=bench/report.json; status=$$?; \
	$(BIN)/python -m bench.report bench/report.json; exit $$status

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache

# The batch record's kill -9 / resume test with 100 kill points instead of 20 (a few minutes).
test-kill-long: setup
	BIOIMP_KILL_POINTS=100 $(BIN)/pytest -q -s tests/twin/test_resume_kill.py

# bioimp fit: the 95 % intervals' coverage over 20 seeded repetitions of three simulated CHO batches
# (make test runs 5; docs/fit.md has the measured figure).
test-fit-coverage: setup
	BIOIMP_FIT_REPS=20 $(BIN)/pytest -q -s tests/twin/fit/test_coverage.py

# The soak (docs/reliability.md): a 14-day CHO batch, accelerated 2000x (about 10 min), under a seeded
# random schedule of link faults, partitions, sensor faults and a plant kill. make test runs 1 day of it.
soak: setup
	BIOIMP_SOAK_DAYS=14 $(BIN)/pytest -q -s tests/faults/test_soak.py
