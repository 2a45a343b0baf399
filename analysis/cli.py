"""`cxrsweep report OUT`: tables, figures and index.html from a sweep's Parquet results."""
from __future__ import annotations

import argparse

from analysis.choices import CI_METHODS, FORMATS
from errors import MissingInput


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report",
        help="build the paper's tables and figures from OUT/results/*.parquet",
        description="Read OUT/results/{trials,images}.parquet and write Table I, Table II, the confidence-"
        "interval figures, the overlays and index.html under OUT/report/.",
    )
    parser.add_argument("out", metavar="OUT", help="the sweep's output directory (holds results/), or its storage "
                                                  "URI (s3://, gs://): the report is then written back to OUT/report/")
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
    from protocol.storage import is_uri

    if is_uri(args.out):
        print(report_from_storage(args.out, formats=args.formats, ci=args.ci, profile=args.profile))
        return 0
    path = build_report(args.out, formats=args.formats, ci=args.ci, profile=args.profile)
    print(path)
    return 0


def report_from_storage(out: str, **options) -> str:
    """The report of a sweep whose OUT is a bucket: its results and the runs' images are copied
    to a temporary folder, the report is built there and copied to OUT/report/; returns its URI."""
    import tempfile
    from pathlib import Path

    from analysis.report import build_report
    from protocol.storage import Storage

    store = Storage(out)
    with tempfile.TemporaryDirectory(prefix="cxrsweep-report-") as tmp:
        local = Path(tmp)
        if not store.download(local, "results", suffixes=(".parquet",)):
            raise MissingInput(f"{store.uri('results')}: results directory not found (is {out} a sweep's output?)")
        # What the report shows beside the tables: overlays, translations and each run's labels.
        store.download(local, "runs", suffixes=(".png", "/result.json"))
        built = build_report(local, **options)
        store.upload(local / "report", "report")
        return store.uri(*Path(built).relative_to(local).parts)
