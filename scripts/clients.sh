#!/usr/bin/env bash
# The tutorial's client script: starts NUM_CLIENTS clients in the background, client i training on
# $TR_PATH/train_<i>.tsv, and waits for all of them. Exits non-zero if any client failed.
# Clients retry until the server is up, so no start-up sleep is needed.
# e.g.  NUM_CLIENTS=3 DATA_PATH=/data/cv/en/ TR_PATH=/data/cv/en/partitions/ scripts/clients.sh
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON=${PYTHON:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3 )}
NUM_CLIENTS=${NUM_CLIENTS:-1}
DATA_PATH=${DATA_PATH:-$ROOT/temp_dataset/}
export PYTHONUNBUFFERED=1
# Several torch processes on a few cores: one thread each, or they spin against each other.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

pids=()
trap 'kill "${pids[@]}" 2>/dev/null; exit 130' INT TERM
echo "Starting $NUM_CLIENTS clients."
for ((i = 0; i < NUM_CLIENTS; i++)); do
  echo "Starting client(cid=$i) with partition $i out of $NUM_CLIENTS clients."
  "$PYTHON" "$ROOT/client.py" \
    --cid="$i" \
    --data_path="$DATA_PATH" \
    --tr_path="${TR_PATH:-$DATA_PATH}" \
    --dev_path="${DEV_PATH:-$DATA_PATH/dev.tsv}" \
    --tokenizer_path="${TOKENIZER_PATH:-$DATA_PATH/train.tsv}" \
    --config_path="${CONFIG_PATH:-$ROOT/configs/}" \
    --config_file="${CONFIG_FILE:-small_cpu.yaml}" \
    ${EVAL_DEVICE:+--eval_device="$EVAL_DEVICE"} \
    --server_address="${SERVER_ADDRESS:-127.0.0.1:24338}" \
    --save_path="${SAVE_PATH:-$ROOT/results/tutorial}" \
    --num_threads="${OMP_NUM_THREADS}" \
    "$@" &
  pids+=($!)
done
echo "Started $NUM_CLIENTS clients."
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=1
done
exit $status
