#!/usr/bin/env bash
# Create ./.venv with everything the project and its tests need, unless it is already there.
# Torch is pinned first (a CUDA build that also runs on CPU; torchaudio must match it), then the
# project's own dependencies from pyproject.toml. Override with TORCH_SPEC / PYTHON if needed.
# A venv made before a change of the project's layout gets the project re-installed (seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchaudio==2.11.0"}
VENV=${VENV:-.venv}
root=$(pwd)

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c \
    "import torch, torchaudio, speechbrain, flwr, ray, dp_accounting, ruamel.yaml, sentencepiece, soundfile, matplotlib, pytest, xdist" \
    2>/dev/null; then
  # the project itself, imported from elsewhere (as scripts/ and Flower's processes import it)
  if ! (cd / && "$root/$VENV/bin/python" -c "import fedspeech.core.round, brain, server" 2>/dev/null); then
    "$VENV/bin/python" -m pip install --quiet --no-deps -e .
  fi
  exit 0
fi
echo "setup_env: creating $VENV (first run only; torch is large, this takes a few minutes)"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# shellcheck disable=SC2086
"$VENV/bin/python" -m pip install --quiet $TORCH_SPEC
"$VENV/bin/python" -m pip install --quiet -e ".[test]"
echo "setup_env: ready"
