#!/usr/bin/env bash
# A short GPU check (at most 4 minutes on an H100 / H200, phantoms included), after gpu_check.sh:
#   1. environment (GPU, torch, Ray),
#   2. phantom data sets (40 JSRT-like + 30 mild Montgomery-like cases at 256 px: the target's
#      films are padded and collimated, so the content crop trims every one of them),
#   3. scoring on the device: whole-frame placement and per-image scores of the engines
#      (engine/evaluation/scoring.py) against the numpy reference, on the GPU, on those phantoms,
#   4. a 2-epoch CUDA run of the proposed method at the paper profile with the transfer engine's
#      defaults (mixed precision; whatever adversarial regularisers and epoch selection are the
#      default), M_A trained first for 2 epochs; prints its result.json and effective config;
#      then one transfer epoch with the options that are off by default (R1, instance noise, the
#      semantic term),
#   5. benchmarks/bench_gpu.py, short: (a) one trial of each segmenter and the proposed step,
#      (c) checkpoints, (b) U-Net and proposed trials packed 1, 2 and 4 per GPU through Ray,
#      (d) the paper grid's projected wall time, (a') the U-Net trial and the proposed step with
#      compile=true (as far as the time left allows), (d') the projection with them.
# Each part runs under its own time limit and a failure of one does not stop the others.
# Without a GPU it says so and runs everything at reduced size on the CPU (no compile part).
#
#   PYTHONPATH=. benchmarks/gpu_check_short.sh OUTDIR   # the project's dependencies importable
#
# OUTDIR gets gpu_check_short.log (everything), env.txt, one log per part, bench.json,
# smoke-result.json.
set -u
source "$(dirname "$0")/gpu_check_common.sh"
start_check "${1:-}" gpu_check_short.log /tmp/cxs.XXXXXX || exit 2
TOTAL=235  # seconds for everything on a GPU; the bench gets what the earlier parts left

# 1. Environment.
describe_environment 2>&1 | tee "$DEST/env.txt"
if has_gpu; then
  stamp "GPU found: full size"
  SYNTH=(--n-source 40 --n-target 30 --source-size 256 --target-size 256 --target-shift mild)
  SIZE=256
  SMOKE=(--profile paper --set device=cuda --set epochs=2 --set warmup_epochs=1 --set transfer_epochs=2)
  BENCH=(--profiles paper --packings 1,2,4 --packing-seconds 2 --gpus 1,2,4,8)
  SMOKE_LIMIT=60
else
  stamp "no GPU found: everything at reduced size on the CPU (64 px, narrow networks, no compile part); the figures describe this CPU"
  SYNTH=(--n-source 15 --n-target 10 --source-size 128 --target-size 128 --target-shift mild)
  SIZE=64
  SMOKE=(--profile smoke --set epochs=2 --set warmup_epochs=1 --set transfer_epochs=2 --set num_threads=1)
  BENCH=(--profiles paper --packings 1,2 --packing-seconds 1 --gpus 1,8 --skip compile)
  SMOKE_LIMIT=300 TOTAL=900
fi
DATA=(--jsrt "$WORK/data/jsrt" --scr "$WORK/data/scr" --montgomery "$WORK/data/montgomery")

# 2. Phantoms.
run_part phantoms 30 python -m commands.main data synth "$WORK/data" "${SYNTH[@]}"

# 3. Scoring on the device against the numpy reference, on the cropped phantoms.
run_part scoring 40 python - "$WORK/data" "$SIZE" <<'EOF'
import sys, time
import numpy as np, torch
from data_io.cache import load_jsrt, load_target
from data_io.preprocess import CropBox, mask_to_full_frame
from models.registry import build_segmenter
from engine.data.segmentation import FullFrame, score_per_image
from engine.runtime.device import memory_format_for, resolve_device
from engine.runtime.prediction import predict_masks
from engine.evaluation.scoring import FramePlacement, SplitScorer

data, size = sys.argv[1], int(sys.argv[2])
device = resolve_device("auto")
target = load_target("montgomery", f"{data}/montgomery", size)
jsrt = load_jsrt(f"{data}/jsrt", f"{data}/scr", size)
frame = FullFrame.of(target, "lungs", np.arange(len(target.ids)))
trimmed = sum(CropBox.from_row(row).trimmed for row in target.crop_boxes)
print(f"device {device}; {len(target.ids)} target films at {size} px, {trimmed} trimmed by the content crop")
rng = np.random.default_rng(0)
predictions = (rng.random(target.images.shape) < 0.5).astype(np.uint8)
placed = FramePlacement(frame, (size, size), device).apply(torch.from_numpy(predictions).to(device)).cpu().numpy()
expected = np.stack([mask_to_full_frame(p, CropBox.from_row(r), (size, size)) for p, r in zip(predictions, target.crop_boxes)])
print("whole-frame placement on the device equals mask_to_full_frame:", bool(np.array_equal(placed, expected)))
truth = target.masks["lungs"]
got = SplitScorer(target.images, truth, frame, device).score(torch.from_numpy(predictions).to(device))
reference = score_per_image(predictions, truth, frame)
print("scores of those predictions on the device equal score_per_image:",
      bool(np.array_equal(got[0], reference[0]) and np.array_equal(got[1], reference[1])))
torch.manual_seed(0)
model = build_segmenter("unet", width=0.25).to(device, memory_format=memory_format_for(device))
for name, images, masks, split_frame in [("jsrt (no crop)", jsrt.images, jsrt.masks["lungs"], None),
                                         ("montgomery (cropped)", target.images, target.masks["lungs"], frame)]:
    scorer = SplitScorer(images, masks, split_frame, device)
    predicted = scorer.predict(model)
    reference = score_per_image(predicted.cpu().numpy(), masks, split_frame)
    got = scorer.score(predicted)
    same = np.array_equal(got[0], reference[0]) and np.array_equal(got[1], reference[1])
    # The prediction itself: the device pass against predict_masks (one batch size, same kernels).
    agree = float((predicted.cpu().numpy() == predict_masks(model, images, device)).mean())
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(5):
        scorer(model)
    pass_ms = (time.perf_counter() - started) / 5 * 1000
    started = time.perf_counter()
    for _ in range(5):
        score_per_image(predict_masks(model, images, device), masks, split_frame)
    reference_ms = (time.perf_counter() - started) / 5 * 1000
    print(f"{name}: device scores equal the reference on the same predictions: {same}; predictions agree with "
          f"predict_masks on {agree:.4%} of pixels; a pass of {len(images)} images: {pass_ms:.1f} ms on the device, "
          f"{reference_ms:.1f} ms the reference way (untrained U-Net width 0.25)")
EOF

# 4. The proposed method on CUDA, 2 epochs, with the engine's defaults.
run_part smoke "$SMOKE_LIMIT" python -m commands.main train-transfer --method proposed --task lungs --label-fraction 0 \
  "${SMOKE[@]}" "${DATA[@]}" --out "$WORK/smoke"
if [ -f "$WORK/smoke/result.json" ]; then
  cp "$WORK/smoke/result.json" "$DEST/smoke-result.json"
  python - "$WORK/smoke/result.json" <<'EOF' 2>&1 | tee "$DEST/smoke-summary.txt"
import json, sys
result = json.load(open(sys.argv[1]))
config = result.pop("config")
print("smoke result:", json.dumps(result, sort_keys=True))
print("smoke config:", json.dumps(config, sort_keys=True))
EOF
else
  stamp "smoke: no result.json"
fi

# 4b. The adversarial options that are off by default (R1 penalty, instance noise, the semantic
# term) through the same CUDA loop for one transfer epoch: they run under mixed precision too.
run_part options "$SMOKE_LIMIT" python -m commands.main train-transfer --method proposed --task lungs --label-fraction 0 \
  "${SMOKE[@]}" --set transfer_epochs=1 --set r1_gamma=1 --set instance_noise=0.3 --set w_semantic=1 \
  "${DATA[@]}" --out "$WORK/options"
[ -f "$WORK/options/result.json" ] && python -c "import json,sys; r=json.load(open(sys.argv[1])); \
print('options result:', {k: r.get(k) for k in ('best_epoch', 'selected_model', 'discriminators_saturated', 'duration_s')})" \
  "$WORK/options/result.json"

# 5. The benchmark, with the time the earlier parts left.
LEFT=$(( TOTAL - ($(date +%s) - STARTED) ))
if [ "$LEFT" -gt 60 ]; then
  run_part bench "$LEFT" python benchmarks/bench_gpu.py --json "$DEST/bench.json" --budget-s $(( LEFT - 15 )) "${BENCH[@]}"
else
  stamp "bench: not run (only ${LEFT}s left of ${TOTAL}s)"
fi
stamp "done; outputs in $DEST"
cleanup_ray
rm -rf "$WORK"
