#!/usr/bin/env bash
# The Flower App on the Deployment Engine, on this machine: one flower-superlink and
# NUM_SUPERNODES flower-supernode processes on 127.0.0.1 (SuperNode k trains on
# temp_dataset/train_<k>.tsv, as a site would on its own files), submitted with `flwr run`.
#   scripts/deploy_local.sh                 # insecure
#   TLS=1 scripts/deploy_local.sh           # TLS (certificates by scripts/make_certs.sh)
#   TLS=1 AUTH=1 scripts/deploy_local.sh    # locked: + SuperNode authentication, the SuperLink
#                                           #   on 127.0.0.1 only with the SuperExec secret, and
#                                           #   the SuperNodes reaching it through nginx, which
#                                           #   forwards the Fleet API alone (docs/security.md);
#                                           #   an unregistered SuperNode is started too, and
#                                           #   must be refused
# Waits for the run, collects the outputs in $SAVE_PATH (default results/deployment), writes
# $SAVE_PATH/deployment.json (the address sites connect to, the operator's address) and stops
# every process, the proxy included, also on Ctrl+C or failure. Extra arguments go to
# scripts/flower_run.py deploy.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
flags=()
[ "${TLS:-0}" = 1 ] && flags+=(--tls)
[ "${AUTH:-0}" = 1 ] && flags+=(--auth)
if [ "${TLS:-0}" = 1 ] && [ "${AUTH:-0}" = 1 ] && ! PATH="$PATH:/usr/sbin:/sbin" command -v nginx >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "deploy_local: installing nginx (the proxy in front of the SuperLink)"
    apt-get update -qq && apt-get install -y -qq nginx >/dev/null
  else
    echo "error: nginx not found (the proxy in front of the SuperLink); install it with: sudo apt-get install -y nginx" >&2
    exit 2
  fi
fi
exec .venv/bin/python scripts/flower_run.py deploy \
  --num_supernodes "${NUM_SUPERNODES:-2}" \
  --rounds "${ROUNDS:-3}" \
  --local_epochs "${LOCAL_EPOCHS:-2}" \
  --save_path "${SAVE_PATH:-results/deployment}" \
  "${flags[@]}" "$@"
