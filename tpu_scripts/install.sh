#!/usr/bin/env bash
# Installs kipjax on every worker of the pod: Python 3.11 venv, `pip install -e .`, and jax[tpu] with libtpu.
#
#   TPU_NAME=kipjax-v4-32 ZONE=us-central2-b tpu_scripts/install.sh
#
# The code comes from REPO_URL (git clone, or pull when already cloned) when it is set; otherwise this checkout
# (without .git and build outputs) is copied to every worker. Re-run after changing the code.
# Settings (environment variables, defaults in brackets):
#   TPU_NAME [kipjax-v4-32]  ZONE [us-central2-b]  PROJECT [gcloud's configured project]
#   REPO_URL [unset: copy this checkout]  REPO_REF [origin/HEAD]: with REPO_URL, a commit, tag or origin/BRANCH
#   REPO_DIR [kipjax]  VENV_DIR [kipjax-venv]: on the workers, relative to the home directory or absolute
#   PYTHON [python3.11]: a command name; PYTHON and PYTHON-venv are installed with apt when missing
set -euo pipefail

TPU_NAME="${TPU_NAME:-kipjax-v4-32}"
ZONE="${ZONE:-us-central2-b}"
PROJECT="${PROJECT:-}"
REPO_URL="${REPO_URL:-}"
REPO_REF="${REPO_REF:-}"
REPO_DIR="${REPO_DIR:-kipjax}"
VENV_DIR="${VENV_DIR:-kipjax-venv}"
PYTHON="${PYTHON:-python3.11}"
LIBTPU_LINKS="https://storage.googleapis.com/jax-releases/libtpu_releases.html"
# Same range as setup.py's jax[cpu] pin, so pip does not move jax to a version kipjax was not tested with.
JAX_TPU="jax[tpu]>=0.10,<0.11"
ARCHIVE=/tmp/kipjax-src.tgz

project_flags=()
if [[ -n "$PROJECT" ]]; then
  project_flags=(--project "$PROJECT")
fi
tpu=(--zone "$ZONE" ${project_flags[@]+"${project_flags[@]}"})

if [[ -z "$REPO_URL" ]]; then
  repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  local_archive="$(mktemp "${TMPDIR:-/tmp}/kipjax-src.XXXXXX")"
  trap 'rm -f "$local_archive"' EXIT
  echo "copying $repo_root to $REPO_DIR on every worker of $TPU_NAME"
  COPYFILE_DISABLE=1 tar -czf "$local_archive" -C "$repo_root" \
    --exclude=.git --exclude=.venv --exclude=venv --exclude='*.egg-info' --exclude=__pycache__ .
  gcloud compute tpus tpu-vm scp "$local_archive" "$TPU_NAME:$ARCHIVE" --worker=all "${tpu[@]}"
fi

# The worker-side script: settings first (quoted with %q for the workers' bash), then the fixed body.
remote_settings="$(printf 'REPO_URL=%q REPO_REF=%q REPO_DIR=%q VENV_DIR=%q PYTHON=%q LIBTPU_LINKS=%q JAX_TPU=%q ARCHIVE=%q' \
  "$REPO_URL" "$REPO_REF" "$REPO_DIR" "$VENV_DIR" "$PYTHON" "$LIBTPU_LINKS" "$JAX_TPU" "$ARCHIVE")"
# shellcheck disable=SC2016  # expanded on the workers, not here
remote_body='
set -euo pipefail
cd "$HOME"
case "$REPO_DIR" in /*) ;; *) REPO_DIR="$HOME/$REPO_DIR" ;; esac
case "$VENV_DIR" in /*) ;; *) VENV_DIR="$HOME/$VENV_DIR" ;; esac
if ! "$PYTHON" -c "import venv, ensurepip" 2>/dev/null; then
  sudo apt-get update -q
  sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$PYTHON" "$PYTHON-venv"
fi
if [ -n "$REPO_URL" ]; then
  if [ -d "$REPO_DIR/.git" ]; then
    git -C "$REPO_DIR" fetch -q origin
  else
    git clone -q "$REPO_URL" "$REPO_DIR"
  fi
  git -C "$REPO_DIR" checkout -q --detach "${REPO_REF:-origin/HEAD}"
else
  mkdir -p "$REPO_DIR"
  tar -xzf "$ARCHIVE" -C "$REPO_DIR"
  rm -f "$ARCHIVE"
fi
[ -x "$VENV_DIR/bin/python" ] || "$PYTHON" -m venv "$VENV_DIR"
"$VENV_DIR/bin/pip" install -q -U pip
"$VENV_DIR/bin/pip" install -q -e "$REPO_DIR" "$JAX_TPU" -f "$LIBTPU_LINKS"
"$VENV_DIR/bin/python" -c "import jax, kipjax; print(\"jax\", jax.__version__, \"and kipjax installed\")"
echo "$(hostname): installed in $VENV_DIR"
'

gcloud compute tpus tpu-vm ssh "$TPU_NAME" --worker=all "${tpu[@]}" --command "$remote_settings; $remote_body"
echo "installed on every worker of $TPU_NAME; next: tpu_scripts/launch.sh --gin_file=... (see tpu_scripts/README.md)"
