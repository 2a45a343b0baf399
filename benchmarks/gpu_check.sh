#!/usr/bin/env bash
# The GPU check of the paper-scale sweep, as one script (about 6 minutes on an H100):
#   1. environment (GPU, torch, Ray),
#   2. phantom data sets (40 JSRT-like + 30 Montgomery-like cases at 256 px),
#   3. benchmarks/bench_gpu.py at full size: one trial's images/s, packing 1/2/4/8 trials on the
#      GPU through Ray, checkpoint cost, the paper grid's projected wall time,
#   4. a 3-epoch `paper`-profile slice of the sweep through Ray (Table I U-Net + FCN on two folds,
#      and every transfer method at 0 and 50 % labels with its warm-up), then a summary of its
#      trials.parquet: status, device, start / end times (no stage barrier), checkpoint columns.
# Each part runs under its own time limit and a failure of one does not stop the others.
# Without a GPU it says so and runs everything at reduced size (64 px, narrow networks).
#
#   benchmarks/gpu_check.sh OUTDIR        # with the project and its dependencies installed
#
# OUTDIR gets gpu_check.log (everything), env.txt, bench.log + bench.json, sweep.log, the sweep's
# results/*.parquet and small per-trial files under sweep/ (no checkpoints), summary.txt.
set -u
source "$(dirname "$0")/gpu_check_common.sh"
start_check "${1:-}" gpu_check.log /tmp/cxg.XXXXXX || exit 2

# 1. Environment.
describe_environment 2>&1 | tee "$DEST/env.txt"
if has_gpu; then
  GPU=1
  stamp "GPU found: full size"
  SYNTH=(--n-source 40 --n-target 30 --source-size 256 --target-size 256)
  SIZE=()
  BENCH=(--profiles paper,cpu,smoke --budget-s 180)
  BENCH_LIMIT=200 SWEEP_LIMIT=140
else
  GPU=0
  stamp "no GPU: everything at reduced size on the CPU (64 px, narrow networks); the figures describe this CPU"
  SYNTH=(--n-source 15 --n-target 10 --source-size 128 --target-size 128)
  SIZE=(--set image_size=64 --set width=0.125 --set translator_width=8 --set num_threads=1)
  BENCH=(--profiles paper --packings 1,2 --packing-seconds 1 --gpus 1,8 --skip compile)
  BENCH_LIMIT=600 SWEEP_LIMIT=600
fi

# 2. Phantoms.
run_part phantoms 120 python -m commands.main data synth "$WORK/data" "${SYNTH[@]}"

# 3. The benchmark.
run_part bench "$BENCH_LIMIT" python benchmarks/bench_gpu.py --json "$DEST/bench.json" "${BENCH[@]}"

# 4. A 3-epoch paper-profile slice of the sweep through Ray.
run_part sweep "$SWEEP_LIMIT" python -m commands.main run all --profile paper \
  --set epochs=3 --set warmup_epochs=3 --set transfer_epochs=3 "${SIZE[@]}" \
  --models unet,fcn --tasks lungs --folds 0,1 --repetitions 0 --fractions 0,50 \
  --jsrt "$WORK/data/jsrt" --scr "$WORK/data/scr" --montgomery "$WORK/data/montgomery" \
  --out "$WORK/sweep" --progress-every 10
mkdir -p "$DEST/sweep"
if [ -d "$WORK/sweep" ]; then  # the small files only: no checkpoints, no pickles
  (cd "$WORK/sweep" && find . -type f -size -2M ! -name '*.pt' ! -name '*.pkl' -exec cp --parents -t "$DEST/sweep" {} +)
fi
python - "$DEST/sweep" <<'EOF' 2>&1 | tee "$DEST/summary.txt"
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
try:
    import pandas as pd
    trials = pd.read_parquet(out / "results" / "trials.parquet")
except Exception as exc:
    print(f"sweep summary: no trials.parquet ({type(exc).__name__}: {exc})")
    sys.exit(0)
t0 = trials.started_at.min()
trials = trials.assign(start=trials.started_at - t0, end=trials.finished_at - t0)
columns = ["trial_id", "status", "device", "start", "end", "duration_s", "checkpoint_count", "checkpoint_bytes",
           "checkpoint_s", "test_jaccard_mean"]
with pd.option_context("display.width", 250, "display.max_columns", 20, "display.max_colwidth", 60):
    print(trials[columns].round(2).to_string(index=False))
ok = trials[trials.status == "ok"]
print(f"{len(ok)} ok / {len(trials)} rows; devices {sorted(ok.device.dropna().unique())}")
seg, transfer = ok[ok.experiment == "segmentation"], ok[ok.experiment == "transfer"]
if len(seg) and len(transfer):
    early = transfer[transfer.started_at < seg.finished_at.max()]
    print(f"transfer trials started before the last Table I trial ended: {len(early)} of {len(transfer)} "
          "(no stage barrier)")
trained = ok[ok.checkpoint_count > 0]
if len(trained):
    print(f"checkpoints per trained trial: {sorted(int(n) for n in trained.checkpoint_count.unique())}; last.pt "
          f"{trained.checkpoint_bytes.max() / 1e6:.0f} MB at most; "
          f"{trained.checkpoint_s.sum() / trained.duration_s.sum():.1%} of the trials' engine time")
EOF
stamp "done; outputs in $DEST"
cleanup_ray
rm -rf "$WORK"
