#!/usr/bin/env bash
# The GPU check of fused trials (`cxrsweep run --fuse K`), as one script (about 8.5 minutes on
# an H100 / H200: 8 minutes of part limits, plus start-up and clean-up; run it with the
# device tool's whole 600 s):
#   1. environment (GPU, torch, Ray),
#   2. fused against alone on the device: the 5 JSRT-phantom folds of U-Net, FCN and SegNet
#      (smoke profile, 4 epochs) trained fused (the GPU's vmapped step) and one by one: per fold
#      the test-Jaccard gap and whether the best epoch agrees; the same for the proposed method's
#      runs at 0, 50 and 100 % labels of a Montgomery phantom,
#   3. benchmarks/bench_fused.py at paper size: training images/s of K = 1, 2, 4, 5, 8 U-Nets fused
#      against K trials packed on the GPU, host and device memory of a fused trial, and the paper
#      grid's projected wall time on 1, 2, 4, 8 GPUs before and after fusing (trial-seconds by kind:
#      where the hours are); then the proposed method's runs at K = 1, 2, 4, 8 and the projection
#      again with them fused at their own measured K; then FCN and SegNet at K = 1, 4, 8.
# Each part runs under its own time limit and a failure of one does not stop the others.
# Without a GPU it says so and runs everything at reduced size on the CPU (the figures are CPU
# figures, and the CPU's fused step is member by member: its gaps are 0).
#
#   benchmarks/gpu_check_fused.sh OUTDIR   # with the project and its dependencies installed
#
# OUTDIR gets gpu_check_fused.log (everything), env.txt, one log per part, equivalence.json, unet.json,
# proposed.json, others.json.
set -u
source "$(dirname "$0")/gpu_check_common.sh"
start_check "${1:-}" gpu_check_fused.log /tmp/cxf.XXXXXX || exit 2

# 1. Environment.
describe_environment 2>&1 | tee "$DEST/env.txt"
if has_gpu; then
  stamp "GPU found: paper size"
  UNET=(--models unet --profiles paper --ks 1,2,4,5,8 --images 148 --epochs 2 --gpus 1,2,4,8)
  # 82: Montgomery's training split, 21 steps of 4 + 4 images an epoch (bench_gpu.split_sizes).
  PROPOSED=(--models proposed --profiles paper --ks 1,2,4,8 --images 82 --epochs 1 --gpus 1,2,4,8)
  OTHERS=(--models fcn,segnet --profiles paper --ks 1,4,8 --images 148 --epochs 2)
  EQUIVALENCE_LIMIT=100 UNET_LIMIT=170 PROPOSED_LIMIT=130 OTHERS_LIMIT=80
else
  stamp "no GPU found: reduced size on the CPU; every figure describes this CPU"
  UNET=(--models unet --profiles paper --ks 1,2 --images 4 --epochs 1 --gpus 1,8 --steps grouped,each)
  PROPOSED=(--models proposed --profiles paper --ks 1,2 --images 4 --epochs 1 --gpus 1,8 --steps grouped,each)
  OTHERS=(--models fcn --profiles cpu --ks 1,2 --images 4 --epochs 1 --steps grouped,each)
  EQUIVALENCE_LIMIT=300 UNET_LIMIT=900 PROPOSED_LIMIT=600 OTHERS_LIMIT=300
fi

# 2. Fused against alone on this device.
run_part equivalence "$EQUIVALENCE_LIMIT" python benchmarks/bench_fused.py --equivalence --models unet,fcn,segnet,proposed \
  --json "$DEST/equivalence.json"

# 3. Throughput, memory and the projected grid.
run_part unet "$UNET_LIMIT" python benchmarks/bench_fused.py "${UNET[@]}" --json "$DEST/unet.json"
run_part proposed "$PROPOSED_LIMIT" python benchmarks/bench_fused.py "${PROPOSED[@]}" --json "$DEST/proposed.json" \
  --rows-from "$DEST/unet.json"
run_part others "$OTHERS_LIMIT" python benchmarks/bench_fused.py "${OTHERS[@]}" --json "$DEST/others.json"
stamp "done; outputs in $DEST"
cleanup_ray
rm -rf "$WORK"
