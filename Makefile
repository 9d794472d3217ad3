# Two commands: `make serve` runs the service on the committed models; `make test` runs every test.
VENV ?= .venv
PYTHON ?= python3
BIND ?= 127.0.0.1:8000

$(VENV)/.installed: pyproject.toml setup.py service/_digit.c  # the C extension builds at install
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --upgrade pip
	$(VENV)/bin/python -m pip install -e ".[dev]"
	touch $@

.PHONY: install serve test test-fast lint
install: $(VENV)/.installed

serve: install
	$(VENV)/bin/convnet-service serve --bind $(BIND)

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/python -m pytest --durations=25

# The quick loop while editing: everything but the tests marked slow.
test-fast: install
	$(VENV)/bin/python -m pytest -m "not slow" -q

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
