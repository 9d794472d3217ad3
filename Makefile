# Two commands: `make serve` runs the service on the committed models; `make test` runs every test.
VENV ?= .venv
PYTHON ?= python3
BIND ?= 127.0.0.1:8000

# The locked versions (requirements/dev.txt, every file hashed), then the project itself without
# resolving again; the C extension builds here. CONVNET_REQUIRE_DIGIT_KERNEL=1 makes a failed
# build of it an error instead of a warning (the Dockerfile sets it).
$(VENV)/.installed: pyproject.toml setup.py service/_digit.c requirements/dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --require-hashes -r requirements/dev.txt
	$(VENV)/bin/python -m pip install --no-deps --no-build-isolation -e .
	touch $@

.PHONY: install lock serve test test-fast lint
install: $(VENV)/.installed

# Re-lock after changing pyproject.toml's dependencies (`pip install uv` first): the versions
# already locked stay unless a bound excludes them (uv pip compile --upgrade-package NAME moves
# one). serve.txt is the runtime image's; convert.txt its build stage's (TensorFlow); dev.txt CI's.
LOCK = uv pip compile pyproject.toml requirements/build.in --generate-hashes --quiet \
	--python-version 3.11 --python-platform x86_64-manylinux_2_28
lock:
	$(LOCK) --extra dev -o requirements/dev.txt
	$(LOCK) --extra convert -c requirements/dev.txt -o requirements/convert.txt
	$(LOCK) -c requirements/dev.txt -o requirements/serve.txt

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
