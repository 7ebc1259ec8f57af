#!/usr/bin/env bash
# The test suite: sets up ./.venv on first use, then runs pytest (including the slow end-to-end
# tests with real server and client processes). Extra arguments go to pytest, e.g. -m "not slow".
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
exec .venv/bin/python -m pytest "$@"
