#!/usr/bin/env bash
# The demo: a real federation on the bundled temp_dataset, on CPU. One server and three clients
# (each client a different pair of synthetic speakers), server-side training after every round,
# per-round evaluation, models and history written to results/demo/ (or $SAVE_PATH).
# Extra arguments go to scripts/launch.py, e.g. --rounds 3 or --weight_strategy wer.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
exec .venv/bin/python scripts/launch.py \
  --num_clients "${NUM_CLIENTS:-3}" \
  --save_path "${SAVE_PATH:-results/demo}" \
  --rounds "${ROUNDS:-7}" \
  --local_epochs "${LOCAL_EPOCHS:-2}" \
  --extra_test unseen=temp_dataset/test_unseen.tsv \
  "$@"
