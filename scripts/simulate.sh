#!/usr/bin/env bash
# The Flower App on the Simulation Engine (virtual clients on Ray), on this machine.
#   NUM_CLIENTS=4000 CLIENTS_PER_ROUND=10 ROUNDS=3 scripts/simulate.sh
# Each virtual client's shard of temp_dataset/train.tsv is computed on the fly (by speaker, seeded;
# when clients outnumber speakers each draws its own seeded sample). Outputs as server.py's, in
# $SAVE_PATH (default results/simulation). Extra arguments go to scripts/flower_run.py simulate.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
exec .venv/bin/python scripts/flower_run.py simulate \
  --num_clients "${NUM_CLIENTS:-6}" \
  --clients_per_round "${CLIENTS_PER_ROUND:-3}" \
  --rounds "${ROUNDS:-3}" \
  --local_epochs "${LOCAL_EPOCHS:-2}" \
  --save_path "${SAVE_PATH:-results/simulation}" \
  "$@"
