# Two commands for a new user: `make demo` and `make test`. Each installs what it needs and is
# safe to run twice, in either order. Virtualenvs:
#   .venv        the developer's: xnat-oauth editable, test extras, build/ruff/mypy (`make install`)
#   .venv-demo   `make demo`'s: xnat-oauth editable with JupyterLab (kept apart from the tests)
#   .venv-test/  `make test`'s: the built wheel, installed fresh for each leg of the matrix

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
DEMO_VENV := .venv-demo
DEMO_PY   := $(DEMO_VENV)/bin/python
PIP_STAMP  := $(VENV)/.xnat-oauth-installed
NPM_STAMP  := node_modules/.xnat-oauth-installed
DEMO_STAMP := $(DEMO_VENV)/.xnat-oauth-demo-installed
CONSTRAINTS := requirements/constraints.txt

# Quiet, non-interactive pip that still shows every warning and error (see scripts/pip_quiet.sh).
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PIP_NO_INPUT := 1
export PIP_PROGRESS_BAR := off
export PIP_ROOT_USER_ACTION := ignore
PIP_QUIET := scripts/pip_quiet.sh
# setuptools tells every editable install of a flat layout to beware of same-named folders in the
# working directory ("Editable installation. ... !!" box): information, not a fault. Only that
# warning is ignored, and only while pip installs the checkout editable.
EDITABLE := PYTHONWARNINGS="ignore:Editable installation"

.PHONY: demo test test-newest test-oldest install lint wheel bench docs clean

install: $(PIP_STAMP) $(NPM_STAMP)

$(PIP_STAMP): pyproject.toml token-client/pyproject.toml $(CONSTRAINTS) requirements/dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_QUIET) $(PY) install -q -c $(CONSTRAINTS) pip
	$(EDITABLE) $(PIP_QUIET) $(PY) install -q -c $(CONSTRAINTS) -e '.[test,docker,kube,docs]' -e token-client -r requirements/dev.txt
	touch $@

$(NPM_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# ruff (lint) and mypy (types) on the package, as configured in pyproject.toml; both always run.
lint: $(PIP_STAMP)
	@status=0; \
	echo "ruff check xnat_oauth spawn_hooks"; \
	$(VENV)/bin/ruff check --quiet --output-format concise xnat_oauth spawn_hooks || status=1; \
	echo "mypy xnat_oauth spawn_hooks"; \
	$(VENV)/bin/mypy xnat_oauth spawn_hooks || status=1; \
	exit $$status

# dist/: the sdist and the wheel, from scratch, and the notebook client's (token-client/: a
# distribution of its own that single-user images install alone). The images and the release
# install these wheels.
wheel: $(PIP_STAMP)
	rm -rf dist
	@$(PY) -m build --dependency-constraints-txt $(CONSTRAINTS) . >$(VENV)/build.log 2>&1 \
	  || { cat $(VENV)/build.log; echo "make wheel: python -m build failed (log above)"; exit 1; }
	@$(PY) -m build --dependency-constraints-txt $(CONSTRAINTS) --outdir dist token-client >>$(VENV)/build.log 2>&1 \
	  || { cat $(VENV)/build.log; echo "make wheel: python -m build token-client failed (log above)"; exit 1; }
	@ls dist

# The whole suite against the built wheel, installed fresh, on the newest and the oldest
# supported JupyterHub and oauthenticator (scripts/test_wheel.sh). Both legs run; either failing
# fails the target. CI (.ci/run) runs `make lint` beside it.
test: wheel $(NPM_STAMP)
	@status=0; \
	scripts/test_wheel.sh newest || status=1; \
	scripts/test_wheel.sh oldest || status=1; \
	exit $$status

test-newest test-oldest: wheel $(NPM_STAMP)
	scripts/test_wheel.sh $(@:test-%=%)

$(DEMO_STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(DEMO_PY) || $(PYTHON) -m venv $(DEMO_VENV)
	$(PIP_QUIET) $(DEMO_PY) install -q -c $(CONSTRAINTS) pip
	$(EDITABLE) $(PIP_QUIET) $(DEMO_PY) install -q -c $(CONSTRAINTS) -e '.[demo]' -e token-client
	touch $@

# A JupyterHub on a printed 127.0.0.1 URL with an AAF-like provider, the XNAT emulator and demo
# accounts; servers start with the user's XNAT data and token (JupyterLab for the sample notebook).
demo: $(DEMO_STAMP) $(NPM_STAMP)
	$(DEMO_PY) -m scripts.demo

bench: install
	$(PY) -m benchmarks.run

docs: install
	$(PY) -m mkdocs build --strict

clean:
	rm -rf $(VENV) $(DEMO_VENV) .venv-test node_modules .demo site dist build
