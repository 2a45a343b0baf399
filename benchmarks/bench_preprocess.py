"""Time the first preprocessing of a full-size JSRT + SCR set, and a cache hit.

Writes 247 phantom `.IMG` files at 2048 x 2048 with SCR GIF masks at 1024 x 1024 (the real
sizes; about 2.1 GB, reused between runs), then loads them with `load_jsrt` at 256 px into an
empty cache and once more from the cache. Targets on 2 cores: first pass <= 60 s, hit <= 1 s.

    python benchmarks/bench_preprocess.py [--data /tmp/cxrsweep-bench] [--image-size 256]
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

from data_io.cache import load_jsrt
from data_io.phantoms import synthesize


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the decode pool)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "cxrsweep-bench")
    parser.add_argument("--count", type=int, default=247)
    parser.add_argument("--side", type=int, default=2048)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=0, help="decode processes (0: the loader's default)")
    args = parser.parse_args()
    if args.workers:
        os.environ["CXRSWEEP_DATA_WORKERS"] = str(args.workers)

    jsrt_dir, scr_dir = args.data / "jsrt", args.data / "scr"
    marker = args.data / f"complete-{args.count}-{args.side}"
    if not marker.exists():
        shutil.rmtree(args.data, ignore_errors=True)
        started = time.perf_counter()
        synthesize(args.data, n_source=args.count, n_target=0, source_size=args.side, seed=0)
        marker.touch()
        print(f"wrote {args.count} phantoms at {args.side} px in {time.perf_counter() - started:.1f} s "
              "(not part of the benchmark)")
    size_gb = sum(p.stat().st_size for p in args.data.rglob("*") if p.is_file()) / 1e9
    print(f"data: {args.count} .IMG at {args.side}x{args.side} + {5 * args.count} SCR GIFs at {args.side // 2}, "
          f"{size_gb:.2f} GB in {args.data}")
    print(f"cpu cores visible: {os.cpu_count()}, decode workers: {os.environ.get('CXRSWEEP_DATA_WORKERS', 'default')}")

    # On a shared machine wall time depends on the neighbours; CPU time shows what the work costs.
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="cxrsweep-bench-cache-") as cache:
        cpu, started = _cpu_seconds(), time.perf_counter()
        first = load_jsrt(jsrt_dir, scr_dir, args.image_size, cache_dir=cache)
        first_s, first_cpu = time.perf_counter() - started, _cpu_seconds() - cpu
        cache_mb = first.path.stat().st_size / 1e6
        cpu, started = _cpu_seconds(), time.perf_counter()
        hit = load_jsrt(jsrt_dir, scr_dir, args.image_size, cache_dir=cache)
        hit_s, hit_cpu = time.perf_counter() - started, _cpu_seconds() - cpu
    assert hit.key == first.key and len(hit) == args.count
    print(f"load average (1 min) before / after: {load_before:.1f} / {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores")
    print(f"first preprocessing ({args.count} cases -> {args.image_size} px): {first_s:.1f} s wall, "
          f"{first_cpu:.1f} s CPU (target <= 60 s)")
    print(f"cache hit: {hit_s:.2f} s wall, {hit_cpu:.2f} s CPU (target <= 1 s); cache file {cache_mb:.1f} MB")

if __name__ == "__main__":
    main()
