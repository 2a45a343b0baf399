# Helpers shared by gpu_check.sh and gpu_check_short.sh (sourced, not run). They expect
# $DEST (output folder), $WORK (scratch folder whose path marks the processes to clean up) and
# $STARTED (the script's start, seconds since the epoch).

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
