#!/usr/bin/env bash
# The package as shipped is the package tested: install the wheel in dist/ (not editable) into a
# fresh virtualenv with one leg's pinned constraints, then run the suite from a copy of the
# checkout that has no xnat_oauth/ or spawn_hooks/, so every import of them, in pytest and in
# every hub, server or CLI subprocess it starts, finds the installed wheel. The copy keeps what
# the tests need beside the package: tests/ (the test world), scripts/, benchmarks/, examples/,
# docs/ and node_modules (linked).
#
#   scripts/test_wheel.sh newest [pytest args]   # requirements/constraints.txt
#   scripts/test_wheel.sh oldest [pytest args]   # the same, with requirements/constraints-oldest.txt's floors
#
# `make test` builds the wheel (`make wheel`) and runs both legs.
set -euo pipefail

# One function, parsed whole before it runs: editing this file during a run cannot change the run.
main() {
  cd "$(dirname "$0")/.."
  repo=$PWD

  leg=${1:-}
  [ $# -gt 0 ] && shift
  PYTHON=${PYTHON:-python3}
  base=requirements/constraints.txt
  case "$leg" in
    newest | oldest) ;;
    *) echo "usage: $0 newest|oldest [pytest args]" >&2; exit 2 ;;
  esac

  shopt -s nullglob
  wheels=(dist/xnat_oauth-*-py3-none-any.whl)
  if [ ${#wheels[@]} -ne 1 ]; then
    echo "$0: need exactly one xnat_oauth wheel in dist/ (found ${#wheels[@]}): run 'make wheel'" >&2
    exit 2
  fi
  wheel=$repo/${wheels[0]}
  # the notebook client, built beside it (token-client/): installed too, so servers the tests start use it
  clients=(dist/xnat_oauth_token-*-py3-none-any.whl)
  if [ ${#clients[@]} -ne 1 ]; then
    echo "$0: need exactly one xnat_oauth_token wheel in dist/ (found ${#clients[@]}): run 'make wheel'" >&2
    exit 2
  fi
  client=$repo/${clients[0]}

  root=$repo/.venv-test/$leg
  venv=$root/venv
  tree=$root/tree
  rm -rf "$root"
  mkdir -p "$root"

  constraints=$root/constraints.txt
  if [ "$leg" = oldest ]; then
    "$PYTHON" -m scripts.merge_constraints "$base" requirements/constraints-oldest.txt >"$constraints"
  else
    cp "$base" "$constraints"
  fi

  # Quiet and non-interactive, without hiding errors: no "new release of pip" notice, no prompt, no
  # progress bars (pip_quiet.sh drops one repeated notice of a machine-wide pip.conf, nothing else).
  export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_PROGRESS_BAR=off PIP_ROOT_USER_ACTION=ignore
  pip_quiet() { "$repo/scripts/pip_quiet.sh" "$venv/bin/python" "$@"; }

  start=$(date +%s)
  "$PYTHON" -m venv "$venv"
  pip_quiet install -q -c "$constraints" pip
  pip_quiet install -q -c "$constraints" "$wheel[test,docker,kube,docs]" "$client"
  # every installed distribution's requirements are met (pip check says which are not)
  local broken
  broken=$(pip_quiet check) || { echo "$broken" >&2; return 1; }

  # The checkout minus the package (and what is built or installed). __pycache__ from a
  # developer's editable runs is left behind.
  mkdir -p "$tree"
  local item
  for item in "$repo"/* "$repo"/.[!.]*; do
    case "$(basename "$item")" in
      xnat_oauth | spawn_hooks | .git | .venv* | node_modules | dist | build | site | .demo | .world | *.egg-info \
        | .pytest_cache | .mypy_cache | .ruff_cache | jupyterhub_cookie_secret | jupyterhub.sqlite) continue ;;
    esac
    cp -a "$item" "$tree/"
  done
  find "$tree" -name __pycache__ -type d -prune -exec rm -rf {} +
  ln -s "$repo/node_modules" "$tree/node_modules"
  if [ -z "${XNAT_OAUTH_SHARED:-}" ] && [ -d "$repo/../shared" ]; then
    # tests read reference samples from ../shared beside the checkout (see tests/test_xnat_emulator.py)
    export XNAT_OAUTH_SHARED="$repo/../shared"
  fi

  versions=$("$venv/bin/python" -c 'from importlib.metadata import version as v; print(" ".join(f"{p} {v(p)}" for p in ("xnat-oauth", "jupyterhub", "oauthenticator")))')
  echo "== $leg: $versions (Python $("$venv/bin/python" -c 'import platform; print(platform.python_version())')), installed in $(($(date +%s) - start)) s"

  cd "$tree"
  # tests/conftest.py refuses to start unless xnat_oauth and spawn_hooks come from $venv's site-packages
  # (tests/test_packaging.py compares the wheel with the package's files in $repo)
  export XNAT_OAUTH_TEST_INSTALLED=1 XNAT_OAUTH_SOURCE=$repo
  status=0
  "$venv/bin/python" -m pytest -p no:cacheprovider "$@" || status=$?
  echo "== $leg: pytest exit status $status, $(($(date +%s) - start)) s in all"
  exit $status
}

main "$@"
