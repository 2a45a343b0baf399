#!/usr/bin/env bash
# The images' install steps without a Docker engine: docker/install.sh (the Dockerfile's one RUN
# step) into a clean virtual environment (no system site-packages) of the images' Python, then
# what a node does with it: the command line and a small sweep on phantoms, on a Ray runtime of
# that environment.
#
#   docker/check-install.sh [VENV_DIR]
#
# TORCH_PIP_ARGS as for install.sh; default: the head image's CPU wheel index. On a machine that
# cannot reach that index but holds the CPU wheel, e.g. TORCH_PIP_ARGS="--no-index --find-links DIR".
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-$(mktemp -d)/venv}
python3.11 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
torch_pip_args=${TORCH_PIP_ARGS-"--index-url https://download.pytorch.org/whl/cpu"}
PYTHON="$venv/bin/python" TORCH_PIP_ARGS="$torch_pip_args" bash "$root/docker/install.sh" "$root"

work=$(mktemp -d)
cd "$work"  # not the repository: the installed package must be what runs
"$venv/bin/cxrsweep" --help >/dev/null
"$venv/bin/cxrsweep" data synth data --n-source 10 --n-target 6 --source-size 128 --target-size 128 >/dev/null
RAY_USAGE_STATS_ENABLED=0 "$venv/bin/cxrsweep" run segmentation --profile smoke --models unet --tasks lungs \
  --folds 0 --set epochs=2 --jsrt data/jsrt --scr data/scr --montgomery data/montgomery --cache-dir cache \
  --out out --progress-every 30
echo "check-install: ok ($venv, $work)"
