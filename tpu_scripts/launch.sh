#!/usr/bin/env bash
# Runs `KIPJAX_MULTIHOST=1 python -m kipjax.train ARGS...` on every worker of the pod at once (as multi-host
# JAX requires), from the repository installed by install.sh. All arguments go to kipjax.train unchanged.
#
#   tpu_scripts/launch.sh --gin_file=gin_configs/hard_nce/zeshel.gin --gin_file=gin_configs/runs/tpu_v4_32.gin \
#       --gin.MODEL_DIR="'/mnt/shared/runs/dual'"
#
# Each worker logs to REPO_DIR/LOG_DIR/RUN_NAME-workerN.log; worker 0's output is also streamed here. The
# script waits for every worker and fails if any run failed, unless DETACH=1: then the runs go on in the
# background (nohup) and the script returns at once, which survives a dropped SSH connection.
# Settings (environment variables, defaults in brackets):
#   TPU_NAME [kipjax-v4-32]  ZONE [us-central2-b]  PROJECT [gcloud's configured project]
#   REPO_DIR [kipjax]  VENV_DIR [kipjax-venv]: as for install.sh
#   LOG_DIR [logs]: relative to REPO_DIR on each worker, or absolute
#   RUN_NAME [train-YYYYmmdd-HHMMSS]  DETACH [0]
set -euo pipefail

if [[ $# -eq 0 ]]; then
  echo "usage: $0 --gin_file=... [--gin_file=...] [--gin.KEY=VALUE ...]  (arguments of python -m kipjax.train)" >&2
  exit 2
fi

TPU_NAME="${TPU_NAME:-kipjax-v4-32}"
ZONE="${ZONE:-us-central2-b}"
PROJECT="${PROJECT:-}"
REPO_DIR="${REPO_DIR:-kipjax}"
VENV_DIR="${VENV_DIR:-kipjax-venv}"
LOG_DIR="${LOG_DIR:-logs}"
RUN_NAME="${RUN_NAME:-train-$(date +%Y%m%d-%H%M%S)}"
DETACH="${DETACH:-0}"

project_flags=()
if [[ -n "$PROJECT" ]]; then
  project_flags=(--project "$PROJECT")
fi

# Settings and the training arguments as bash source for the workers: %q quotes each argument so that
# spaces, quotes and `$` reach kipjax.train exactly as they were given here.
remote_settings="$(printf 'REPO_DIR=%q VENV_DIR=%q LOG_DIR=%q RUN_NAME=%q DETACH=%q' \
  "$REPO_DIR" "$VENV_DIR" "$LOG_DIR" "$RUN_NAME" "$DETACH")"
remote_args="TRAIN_ARGS=($(printf ' %q' "$@"))"
# shellcheck disable=SC2016  # expanded on the workers, not here
remote_body='
set -euo pipefail
cd "$HOME"
case "$VENV_DIR" in /*) ;; *) VENV_DIR="$HOME/$VENV_DIR" ;; esac
cd "$REPO_DIR"
mkdir -p "$LOG_DIR"
worker="$(curl -sf -H "Metadata-Flavor: Google" \
  http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number 2>/dev/null || true)"
log="$LOG_DIR/$RUN_NAME-${worker:+worker}${worker:-$(hostname)}.log"
echo "$(hostname): logging to $PWD/$log"
export KIPJAX_MULTIHOST=1
if [ "$DETACH" = 1 ]; then
  nohup "$VENV_DIR/bin/python" -m kipjax.train "${TRAIN_ARGS[@]}" >"$log" 2>&1 </dev/null &
  echo "$(hostname): started pid $!"
elif [ "${worker:-0}" = 0 ]; then
  "$VENV_DIR/bin/python" -m kipjax.train "${TRAIN_ARGS[@]}" 2>&1 | tee "$log"
else
  "$VENV_DIR/bin/python" -m kipjax.train "${TRAIN_ARGS[@]}" >"$log" 2>&1
fi
'

gcloud compute tpus tpu-vm ssh "$TPU_NAME" --worker=all --zone "$ZONE" ${project_flags[@]+"${project_flags[@]}"} \
  --command "$remote_settings; $remote_args; $remote_body"
