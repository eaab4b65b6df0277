# Two commands for a new user: `make demo` and `make test`. Each installs what it needs
# (a virtualenv in .venv, npm packages from package-lock.json) and is safe to run twice.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP_STAMP := $(VENV)/.xnat-oauth-installed
NPM_STAMP := node_modules/.xnat-oauth-installed
DEMO_STAMP := $(VENV)/.xnat-oauth-demo-installed

.PHONY: demo test install bench docs clean

install: $(PIP_STAMP) $(NPM_STAMP)

$(PIP_STAMP): pyproject.toml requirements/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements/constraints.txt -e '.[test,docker,kube,docs]'
	touch $@

$(NPM_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Runs the whole suite (real JupyterHub, OpenID provider, XNAT emulator, on 127.0.0.1 only).
test: install
	$(PY) -m pytest

$(DEMO_STAMP): $(PIP_STAMP)
	$(PY) -m pip install -q -c requirements/constraints.txt -e '.[demo]'
	touch $@

# A JupyterHub on a printed 127.0.0.1 URL with an AAF-like provider, the XNAT emulator and demo
# accounts; servers start with the user's XNAT data and token (JupyterLab for the sample notebook).
demo: install $(DEMO_STAMP)
	$(PY) -m scripts.demo

bench: install
	$(PY) -m benchmarks.run

docs: install
	$(PY) -m mkdocs build --strict

clean:
	rm -rf $(VENV) node_modules .demo site
