# The two commands of the README:
#   make demo   - set up (first time only) and run the main job on a generated demo store
#   make test   - set up (first time only) and run the test suite (the tests marked slow too)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
DEMO_DIR ?= zarrstain-demo

.PHONY: demo test lint install clean

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, from the pinned CPU build, so nothing below pulls a CUDA build
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/zarrstain demo $(DEMO_DIR)

test: $(VENV)/.installed
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check zarrstain cli tests examples benchmarks
	$(VENV)/bin/ruff format --check zarrstain cli tests examples benchmarks
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
