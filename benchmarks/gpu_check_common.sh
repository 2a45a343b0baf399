# Helpers shared by gpu_check.sh and gpu_check_short.sh (sourced, not run).

# start_check OUTDIR LOG TEMPLATE: $DEST (OUTDIR, made and absolute), the repository root as the
# working folder, a scratch folder $WORK from the mktemp TEMPLATE (short: Ray's socket paths live
# under it; its path marks the processes cleanup_ray ends), the environment every part runs in,
# everything printed also appended to $DEST/LOG, and $STARTED.
start_check() {
  if [ -z "$1" ]; then
    echo "usage: $0 OUTDIR" >&2
    return 2
  fi
  mkdir -p "$1" && DEST=$(cd "$1" && pwd) || return 2
  cd "$(dirname "$0")/.." || return 2
  WORK=$(mktemp -d "$3")
  export RAY_TMPDIR=$WORK/ray RAY_USAGE_STATS_ENABLED=0 CXRSWEEP_CACHE=$WORK/cache PYTHONUNBUFFERED=1
  export TMPDIR=$WORK/tmp  # temporary files (compile caches too) go with $WORK
  mkdir -p "$RAY_TMPDIR" "$TMPDIR"
  exec > >(tee -a "$DEST/$2") 2>&1
  STARTED=$(date +%s)
}

stamp() { echo "[gpu_check +$(( $(date +%s) - STARTED ))s] $*"; }

# Processes this script started under $WORK (Ray's raylet, workers...) that outlived a part,
# ended by process id.
cleanup_ray() {
  local pids="" pid
  for pid in $(ls /proc | grep -E '^[0-9]+$'); do
    [ "$pid" = "$$" ] && continue
    if { tr '\0' ' ' < "/proc/$pid/cmdline"; } 2>/dev/null | grep -q -- "$WORK"; then pids="$pids $pid"; fi
  done
  [ -n "$pids" ] && kill $pids 2>/dev/null && sleep 2 && kill -9 $pids 2>/dev/null
  return 0
}

# run_part NAME SECONDS COMMAND...: output to $DEST/NAME.log (and the console); a time limit.
run_part() {
  local name=$1 limit=$2 rc
  shift 2
  stamp "=== $name (limit ${limit}s) ==="
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$DEST/$name.log"
  rc=${PIPESTATUS[0]}
  cleanup_ray
  case $rc in
    0) stamp "=== $name: ok" ;;
    124|137) stamp "=== $name: STOPPED at its time limit (${limit}s); what it printed is above" ;;
    *) stamp "=== $name: FAILED (exit $rc)" ;;
  esac
  return 0
}

# The environment: date, GPU, Python, torch, Ray.
describe_environment() {
  date -u
  nvidia-smi 2>&1 || echo "nvidia-smi: not available"
  python - <<'PYEOF'
import sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| CUDA", torch.version.cuda,
      "| GPUs", torch.cuda.device_count(), [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
try:
    import ray
    print("ray", ray.__version__)
except ImportError as exc:
    print("ray: not importable:", exc)
PYEOF
}

has_gpu() { python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; }
