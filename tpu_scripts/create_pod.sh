#!/usr/bin/env bash
# Creates the TPU v4-32 pod slice (4 hosts, 16 chips) that gin_configs/runs/tpu_v4_32.gin is written for.
#
#   TPU_NAME=kipjax-v4-32 ZONE=us-central2-b tpu_scripts/create_pod.sh [more gcloud flags, e.g. --spot]
#
# Settings (environment variables, defaults in brackets); install.sh and launch.sh read the same names:
#   TPU_NAME [kipjax-v4-32]  ZONE [us-central2-b]  PROJECT [gcloud's configured project]
#   ACCELERATOR_TYPE [v4-32]  TPU_VERSION [tpu-ubuntu2204-base]
set -euo pipefail

TPU_NAME="${TPU_NAME:-kipjax-v4-32}"
ZONE="${ZONE:-us-central2-b}"
PROJECT="${PROJECT:-}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-32}"
TPU_VERSION="${TPU_VERSION:-tpu-ubuntu2204-base}"

project_flags=()
if [[ -n "$PROJECT" ]]; then
  project_flags=(--project "$PROJECT")
fi

# ${a[@]+"${a[@]}"}: an empty array under `set -u` also works with the bash 3.2 of macOS.
gcloud compute tpus tpu-vm create "$TPU_NAME" \
  --zone "$ZONE" \
  --accelerator-type "$ACCELERATOR_TYPE" \
  --version "$TPU_VERSION" \
  ${project_flags[@]+"${project_flags[@]}"} \
  "$@"

echo "created $TPU_NAME ($ACCELERATOR_TYPE) in $ZONE; next: TPU_NAME=$TPU_NAME ZONE=$ZONE tpu_scripts/install.sh"
