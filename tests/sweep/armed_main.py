"""`cxrsweep` with failpoints armed first: how a test that starts a driver as a process of its own
makes its trials fail or hold (sweep.failpoints; nothing else can arm them in that process).

    python tests/sweep/armed_main.py [--fail GLOB TIMES AT_EPOCH]... [--hold GLOB EPOCH]...
                                     [--exit-segment-worker-once MARKER] -- CXRSWEEP_ARGS...

TIMES -1 means always. The rest runs as `python -m commands.main CXRSWEEP_ARGS...` would. The
`armed_cxrsweep` fixture of tests/sweep/conftest.py builds this command line.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def main(argv: list[str]) -> int:
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(prog="armed_main.py")
    parser.add_argument("--fail", nargs=3, action="append", default=[], metavar=("GLOB", "TIMES", "AT_EPOCH"))
    parser.add_argument("--hold", nargs=2, action="append", default=[], metavar=("GLOB", "EPOCH"))
    parser.add_argument("--exit-segment-worker-once", metavar="MARKER")
    rules = parser.parse_args(argv[:split])

    sys.path.insert(0, str(REPO))
    from commands.main import main as cxrsweep
    from sweep.failpoints import FAILPOINTS

    for pattern, times, at_epoch in rules.fail:
        FAILPOINTS.fail(pattern, int(times), int(at_epoch))
    for pattern, epoch in rules.hold:
        FAILPOINTS.hold(pattern, int(epoch))
    if rules.exit_segment_worker_once:
        FAILPOINTS.exit_segment_worker_once(rules.exit_segment_worker_once)
    return cxrsweep(argv[split + 1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
