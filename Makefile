# make run   - create .venv, install chatserv, serve on port 2000
# make test  - create .venv, install chatserv with its test extras, run the suite
# make bench - the side-by-side benchmark (chatserv, twistd words, ngircd, inspircd);
#              results go to benchmarks/results/, see docs/PERFORMANCE.md
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test lint bench bench-quick bench-peers clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(PY) setup.cfg pyproject.toml
	$(PY) -m pip install -q -e '.[test,telegram,postgres,accounts,cluster]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(VENV)/bin/twistd -n --pidfile= chatserv $(ARGS)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check .
	$(PY) -m mypy

# The IRC peers come from Debian; without them the suite measures the others.
bench-peers:
	@if [ "$$(id -u)" = 0 ] && ! command -v ngircd >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ngircd inspircd; fi

bench: install bench-peers
	$(PY) -m benchmarks suite $(BENCH_ARGS)

bench-quick: install
	$(PY) -m benchmarks suite --quick $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
