#!/usr/bin/env bash
# The install steps of the cluster images: docker/Dockerfile runs this script as its one RUN
# step, and docker/check-install.sh runs it into a clean virtual environment, so what the images
# hold is what that check installs.
#
#   install.sh SOURCE_DIR
#
# PYTHON          the interpreter to install into (default: python, the image's own)
# TORCH_PIP_ARGS  where torch comes from: "--index-url https://download.pytorch.org/whl/cpu" for
#                 the CPU-only head; empty (PyPI, whose torch 2.13.0 is the CUDA 13.0 build) for
#                 the GPU workers
set -euo pipefail

src=${1:?usage: install.sh SOURCE_DIR}
python=${PYTHON:-python}
torch_version=2.13.0
ray_version=2.58.0

# torch first, from its own source: the project's requirement (torch>=2.3,<3) is then already
# met and pip does not fetch another build of it from PyPI.
# shellcheck disable=SC2086  # TORCH_PIP_ARGS is a list of pip arguments
"$python" -m pip install --no-cache-dir ${TORCH_PIP_ARGS:-} "torch==${torch_version}"
# The project and its dependencies (ray[tune] pinned to the base image's Ray by pyproject.toml);
# boto3 for the autoscaler on the head, the AWS CLI for `aws s3` there.
"$python" -m pip install --no-cache-dir "$src" "boto3>=1.28" "awscli>=1.29"

# A build that drifted from what the cluster expects fails here, not on a node.
"$python" - "$torch_version" "$ray_version" <<'PY'
import sys

import ray
import torch

import sweep.runner  # noqa: F401  (the trainables and Tune import)

torch_version, ray_version = sys.argv[1:]
assert torch.__version__.split("+")[0] == torch_version, torch.__version__
assert ray.__version__ == ray_version, ray.__version__
print(f"cxrsweep image: ray {ray.__version__}, torch {torch.__version__} (CUDA {torch.version.cuda})")
PY
