#!/usr/bin/env bash
# The test suite: sets up ./.venv on first use, then runs pytest, everything by default (including
# the slow tests that start real server, client and pretrain processes).
#   scripts/run_tests.sh --fast    only the tests not marked slow (-m "not slow")
# Other arguments go to pytest, e.g. scripts/run_tests.sh --fast -k bad_input
set -euo pipefail
cd "$(dirname "$0")/.."
args=()
for arg in "$@"; do
    if [[ "$arg" == "--fast" ]]; then
        args+=(-m "not slow")
    else
        args+=("$arg")
    fi
done
scripts/setup_env.sh
exec .venv/bin/python -m pytest ${args[@]+"${args[@]}"}
