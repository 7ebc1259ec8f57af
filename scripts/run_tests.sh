#!/usr/bin/env bash
# The test suite: sets up ./.venv on first use, then runs pytest, everything by default (including
# the slow tests that start real server, client and pretrain processes).
#   scripts/run_tests.sh --fast    only the tests not marked slow (-m "not slow")
# Other arguments go to pytest, e.g. scripts/run_tests.sh --fast -k bad_input
# The whole suite runs in TEST_WORKERS pytest-xdist workers (default 2; 0 runs it in this
# process): most slow tests wait on their server and client processes about half the time, so two
# at once keep both cores of the development machine busy. Tests that share a fixture run in one
# worker (@pytest.mark.xdist_group). --fast defaults to 0 workers: its tests compute all the
# time, and a second worker importing torch costs more than it saves (42 s against 68 s here).
set -euo pipefail
cd "$(dirname "$0")/.."
args=()
workers=${TEST_WORKERS:-2}
for arg in "$@"; do
    if [[ "$arg" == "--fast" ]]; then
        args+=(-m "not slow")
        workers=${TEST_WORKERS:-0}
    else
        args+=("$arg")
    fi
done
scripts/setup_env.sh
exec .venv/bin/python -m pytest -n "$workers" --dist loadgroup ${args[@]+"${args[@]}"}
