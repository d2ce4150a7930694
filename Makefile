# Two commands: `make demo` (set up + run the embedded default) and `make test` (what CI runs);
# `make test-fast` runs the unit and stage tests only, for a developer's edit-test loop.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= 2
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONUNBUFFERED := 1

.PHONY: demo test test-fast venv system-deps clean

# Debian packages the tests drive for real: a one-node SLURM cluster (slurm-wlm, munge) and
# headless Chromium to render report.html. Installed with apt when missing (CI runs as root).
SYSTEM_TOOLS := slurmctld slurmd munged chromium
SYSTEM_PACKAGES := slurm-wlm munge chromium

venv: $(STAMP)

# pip byte-compiles what it installs (keep it: these machines set PYTHONDONTWRITEBYTECODE=1, so a
# venv installed with --no-compile recompiles torch and transformers in every job, twice as slow)
$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES)

system-deps:
	@for tool in $(SYSTEM_TOOLS); do command -v $$tool >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES); \
	fi

test: $(STAMP) system-deps
	$(BIN)/python -m pytest -q --durations=15

# No snakemake run, no cluster, no browser: pure cores and stages on tiny models (minutes).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit tests/stage

clean:
	rm -rf results logs benchmarks .snakemake
