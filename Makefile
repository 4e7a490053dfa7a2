# make run   - create .venv, install chatserv, serve on port 2000
# make test  - create .venv, install chatserv with its test extras, run the suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(PY) setup.cfg pyproject.toml
	$(PY) -m pip install -q -e '.[test,telegram,postgres,accounts]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(VENV)/bin/twistd -n --pidfile= chatserv $(ARGS)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check .
	$(PY) -m mypy

clean:
	rm -rf $(VENV) build *.egg-info
