#!/usr/bin/env bash
# The tutorial's server script. Every path and setting can be overridden from the environment,
# e.g.  DATA_PATH=/data/cv/en/ TEST_PATH=/data/cv/en/test.tsv ROUNDS=10 scripts/server.sh
# Extra arguments are passed to server.py.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON=${PYTHON:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3 )}
DATA_PATH=${DATA_PATH:-$ROOT/temp_dataset/}

PYTHONUNBUFFERED=1 exec "$PYTHON" "$ROOT/server.py" \
  --data_path="$DATA_PATH" \
  --config_path="${CONFIG_PATH:-$ROOT/configs/}" \
  --tr_path="${TR_PATH:-$DATA_PATH/train.tsv}" \
  --test_path="${TEST_PATH:-$DATA_PATH/test.tsv}" \
  --tr_add_path="${TR_ADD_PATH:-$DATA_PATH/train_add.tsv}" \
  --tokenizer_path="${TOKENIZER_PATH:-$DATA_PATH/train.tsv}" \
  --config_file="${CONFIG_FILE:-small_cpu.yaml}" \
  --min_fit_clients="${MIN_FIT_CLIENTS:-1}" \
  --min_available_clients="${MIN_AVAILABLE_CLIENTS:-1}" \
  --rounds="${ROUNDS:-1}" \
  --local_epochs="${LOCAL_EPOCHS:-1}" \
  --weight_strategy="${WEIGHT_STRATEGY:-num}" \
  --server_address="${SERVER_ADDRESS:-127.0.0.1:24338}" \
  --save_path="${SAVE_PATH:-$ROOT/results/tutorial}" \
  "$@"
