#!/usr/bin/env bash
# Set up everything SparseNet needs and run the whole pipeline on the default dataset.
#   bash run.sh               # install (idempotent), then `dvc repro`
#   bash run.sh --setup-only  # install only (used by CI)
set -euo pipefail
cd "$(dirname "$0")"

setup_only=false
[ "${1:-}" = "--setup-only" ] && setup_only=true

# 1. Fashion-MNIST, offline, from Debian's dataset-fashion-mnist package.
fmnist=/usr/share/datasets/fashion-mnist
if ! $setup_only && [ ! -f "$fmnist/train-images-idx3-ubyte.gz" ]; then
  echo "==> installing Debian package dataset-fashion-mnist"
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq dataset-fashion-mnist
fi

# 2. A C compiler for the inference engine (sparsenet.engine compiles each model once; without a
#    compiler it runs the PyTorch forward instead and says so).
if ! command -v gcc >/dev/null 2>&1 && ! command -v cc >/dev/null 2>&1; then
  echo "==> installing gcc (C compiler for sparsenet.engine)"
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  if ! { $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq gcc libc6-dev; }; then
    echo "warning: could not install gcc; the engine will fall back to the PyTorch forward" >&2
  fi
fi

# 3. Python environment in .venv with everything from requirements.txt (incl. this package).
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  python3 -m venv .venv
fi
echo "==> installing requirements into .venv"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt 2>&1 \
  | { grep -v "^WARNING: Location" || true; }

$setup_only && exit 0

# 4. The pipeline. Stage commands call `python`, so the venv goes first on PATH.
export PATH="$PWD/.venv/bin:$PATH"
echo "==> dvc repro"
dvc repro
echo "==> results (metrics/evaluate.json, metrics/speed.json; figures in plots/, all of them: dvc plots show)"
python -m sparsenet.summary
