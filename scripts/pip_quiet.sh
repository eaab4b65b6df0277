#!/usr/bin/env bash
# Runs `PYTHON -m pip ARGS...` and shows its stderr less one line: pip's notice that a local
# index directory named in a machine-wide pip.conf lacks a project ("Location 'file:///...' is
# ignored"), repeated for every project installed. Every other warning and every error is shown,
# and pip's exit status is kept.
#
#   scripts/pip_quiet.sh .venv/bin/python install -q -c requirements/constraints.txt ...
set -uo pipefail
python=$1
shift
log=$(mktemp)
trap 'rm -f "$log"' EXIT
"$python" -m pip "$@" 2>"$log"
status=$?
grep -v "^WARNING: Location 'file:.*' is ignored: it is neither a file nor a directory\.$" "$log" >&2
exit $status
