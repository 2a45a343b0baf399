"""`cxrsweep report OUT`: tables, figures and index.html from a sweep's Parquet results."""
from __future__ import annotations

import argparse

from analysis.choices import CI_METHODS, FORMATS


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report",
        help="build the paper's tables and figures from OUT/results/*.parquet",
        description="Read OUT/results/{trials,images}.parquet and write Table I, Table II, the confidence-"
        "interval figures, the overlays and index.html under OUT/report/.",
    )
    parser.add_argument("out", metavar="OUT", help="the sweep's output directory (holds results/)")
    parser.add_argument("--formats", default=",".join(FORMATS), type=_formats,
                        help=f"comma-separated table formats among {','.join(FORMATS)} (default: all)")
    parser.add_argument("--ci", choices=CI_METHODS, default="t",
                        help="95%% intervals: t across folds / repetitions, or bootstrap across test images")
    parser.add_argument("--profile", default=None, help="report this profile's trials when OUT holds several")
    parser.set_defaults(func=run)


def _formats(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def run(args: argparse.Namespace) -> int:
    # Imported here so `cxrsweep --help` does not pay for matplotlib and scipy.
    from analysis.report import build_report

    path = build_report(args.out, formats=args.formats, ci=args.ci, profile=args.profile)
    print(path)
    return 0
