#!/usr/bin/env bash
# README command 2 (and what .ci/run calls): set up the venv, then run the test suite.
# Extra arguments go to pytest; the default skips the slow end-to-end tests (-m "not slow").
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$REPO_ROOT"
if [ "$#" -eq 0 ]; then set -- -m "not slow"; fi
exec pytest -q "$@"
