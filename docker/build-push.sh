#!/usr/bin/env bash
# Build cluster.yaml's two images from docker/Dockerfile and push them:
#
#   docker/build-push.sh REGISTRY TAG
#   e.g. docker/build-push.sh 123456789012.dkr.ecr.us-east-1.amazonaws.com v1
#
# gives REGISTRY/cxrsweep:TAG-cpu (the head) and REGISTRY/cxrsweep:TAG-gpu (the GPU workers), built for
# linux/amd64 (the instances' platform, also from an arm64 laptop). Log in to the registry first
# (ECR: docs/cluster.md). It prints the line that puts both names into cluster.yaml.
set -euo pipefail

if [[ $# -ne 2 ]]; then
  echo "usage: $0 REGISTRY TAG   (e.g. 123456789012.dkr.ecr.us-east-1.amazonaws.com v1)" >&2
  exit 2
fi
registry=${1%/}
tag=$2
image=$registry/cxrsweep
root=$(cd "$(dirname "$0")/.." && pwd)

build_and_push() {  # image base-image torch-pip-args
  docker build --platform linux/amd64 --file "$root/docker/Dockerfile" \
    --build-arg BASE_IMAGE="$2" --build-arg TORCH_PIP_ARGS="$3" --tag "$1" "$root"
  docker push "$1"
}

build_and_push "$image:$tag-cpu" rayproject/ray:2.58.0-py311-cpu "--index-url https://download.pytorch.org/whl/cpu"
build_and_push "$image:$tag-gpu" rayproject/ray:2.58.0-py311-cu128 ""

echo "pushed $image:$tag-cpu and $image:$tag-gpu; point cluster.yaml at them with:"
echo "  sed -i.bak -e 's#<your-registry>#$registry#g' -e 's#<tag>#$tag#g' cluster.yaml"
