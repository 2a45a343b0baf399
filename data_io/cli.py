"""`cxrsweep data synth` and `cxrsweep data check`."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from data_io import datasets
from data_io.phantoms import TARGET_SHIFTS
from data_io.readers import image_size, radiograph_size
from errors import UserError

DECODE_CHECK_SIZE = 32  # `check --decode` runs the real preprocessing, small, for every case


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="synthesise phantom datasets or check dataset folders")
    data_sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)

    synth = data_sub.add_parser(
        "synth",
        help="write phantom JSRT/SCR, Montgomery (and Shenzhen) datasets in the original formats",
        description="Writes OUT/jsrt, OUT/scr, OUT/montgomery (and OUT/shenzhen) in the real datasets' layouts.",
    )
    synth.add_argument("out", type=Path, help="output folder")
    synth.add_argument("--n-source", type=int, default=40, help="JSRT-like cases (default 40)")
    synth.add_argument("--n-target", type=int, default=30, help="Montgomery-like cases (default 30)")
    synth.add_argument("--n-shenzhen", type=int, default=0,
                       help="Shenzhen-like cases, about 1 in 7 without a mask (default 0)")
    synth.add_argument("--source-size", type=int, default=512,
                       help="side of the .IMG files; SCR masks are half (default 512)")
    synth.add_argument("--target-size", type=int, default=512, help="long side of the target PNGs (default 512)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument(
        "--target-shift", choices=TARGET_SHIFTS, default="severe",
        help="Montgomery-like regime: severe (default; inverted, gamma-bent detector), mild (the source's polarity, "
             "other exposure, noise, bias, collimation, framing and aspect ratio, padded to a square) or heldout "
             "(held out from design: burned-in markers, an effusion-like opacity on some films, larger/smaller and "
             "more rotated patients, a coarser detector, other exposure, processing and noise)",
    )
    synth.add_argument(
        "--target-inverted-fraction", type=float, default=None,
        help="severe only: share of Montgomery-like images with an inverted response (default 1: every image, a "
             "consistent shift; 0: none; between: a bimodal target)",
    )
    synth.set_defaults(func=_run_synth)

    to_dicom = data_sub.add_parser(
        "to-dicom", help="convert a folder of PNG (etc.) radiographs into DICOM files",
        description="Writes OUT/<id>.dcm for every picture radiograph in SOURCE (e.g. phantom CXR_png/), as "
                    "single-frame DX DICOM with the same gray levels; some MONOCHROME1 with --monochrome1-every. "
                    "Masks are not copied.")
    to_dicom.add_argument("source", type=Path, help="folder of PNG / JPEG / TIFF radiographs")
    to_dicom.add_argument("out", type=Path, help="output folder")
    to_dicom.add_argument("--monochrome1-every", type=int, default=0, metavar="N",
                          help="store every Nth file as MONOCHROME1 (inverted values; default 0: none)")
    to_dicom.set_defaults(func=_run_to_dicom)

    check = data_sub.add_parser(
        "check",
        help="validate and summarise dataset folders",
        description="Exits non-zero when a dataset given is broken. "
                    "Each folder may be the dataset as distributed or its parent.",
    )
    check.add_argument("--jsrt", type=Path, help="JSRT images: .IMG files or re-packaged PNGs")
    check.add_argument("--scr", type=Path, help="SCR masks for JSRT (needed with --jsrt)")
    check.add_argument("--montgomery", type=Path, help="Montgomery set (CXR_png/ + ManualMask/)")
    check.add_argument("--shenzhen", type=Path, help="Shenzhen set (CXR_png/ + mask/)")
    check.add_argument("--target", help="name of the --target-dir folder target (default 'folder')")
    check.add_argument("--target-dir", action="append", metavar="[NAME=]DIR",
                       help="a folder target: radiographs (DICOM, PNG, ...) in DIR (or DIR/images/), optional lung "
                            "masks in DIR/masks/ matched by name (repeatable)")
    check.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    check.add_argument(
        "--decode", action="store_true",
        help="also decode every image and mask (slow on full-size data; catches files damaged after their header)",
    )
    check.set_defaults(func=_run_check)


def _run_synth(args: argparse.Namespace) -> int:
    from data_io.phantoms import synthesize

    written = synthesize(
        args.out,
        n_source=args.n_source,
        n_target=args.n_target,
        n_shenzhen=args.n_shenzhen,
        source_size=args.source_size,
        target_size=args.target_size,
        seed=args.seed,
        target_inverted_fraction=args.target_inverted_fraction,
        target_shift=args.target_shift,
    )
    for name, folder in written.items():
        print(f"{name}: {folder}")
    flags = " ".join(f"--{name} {folder}" for name, folder in written.items())
    print(f"check with: cxrsweep data check {flags}")
    return 0


def _run_to_dicom(args: argparse.Namespace) -> int:
    from data_io.dicom import convert_folder

    converted = convert_folder(args.source, args.out, monochrome1_every=args.monochrome1_every)
    print(f"wrote {len(converted.written)} DICOM file(s) to {args.out} ({len(converted.monochrome1)} MONOCHROME1)")
    return 0


def check_dataset(scan: datasets.Scan, decode: bool = False) -> dict:
    """Validate every case's sizes from the file headers (and its pixels with `decode`); summarise."""
    from data_io.cache import prepare_case

    shapes = []
    for case in scan.cases:
        if decode:
            prepare_case(scan, case, DECODE_CHECK_SIZE)
        shape = radiograph_size(case.image)
        datasets.check_sizes(scan, case, shape, {name: image_size(path) for name, path in case.masks.items()})
        shapes.append(shape)
    return datasets.summarise(scan, shapes)


def _run_check(args: argparse.Namespace) -> int:
    if (args.jsrt is None) != (args.scr is None):
        raise UserError("--jsrt and --scr go together: JSRT images need their SCR masks")
    requested = {}
    if args.jsrt is not None:
        requested["jsrt"] = lambda: datasets.scan_jsrt(args.jsrt, args.scr)
    for name in datasets.TARGET_DATASETS:
        folder = getattr(args, name)
        if folder is not None:
            requested[name] = lambda name=name, folder=folder: datasets.scan_target(name, folder)
    for name, folder in datasets.target_dirs(args.target_dir, args.target or "folder").items():
        requested[name] = lambda name=name, folder=folder: datasets.scan_target(name, folder)
    if not requested:
        raise UserError("nothing to check: give --jsrt/--scr, --montgomery, --shenzhen and/or --target-dir")
    report, broken = {}, False
    for name, scan in requested.items():
        try:
            report[name] = check_dataset(scan(), decode=args.decode)
        except UserError as exc:  # a broken dataset; anything else is a bug and keeps its traceback
            report[name] = {"error": str(exc)}
            broken = True
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_text(report)
    return 1 if broken else 0


def _print_text(report: dict) -> None:
    for name, summary in report.items():
        if "error" in summary:
            print(f"{name}: BROKEN: {summary['error']}", file=sys.stderr)
            continue
        masks = (", ".join(f"{structure} {count}" for structure, count in summary["masks"].items())
                 or "none (unlabelled)")
        sizes = ", ".join(f"{size} ({count})" for size, count in summary["image_sizes"].items())
        print(f"{name}: {summary['cases']} cases in {summary['root']} "
              f"({summary['image_format']}, {summary['mask_layout']} masks)")
        print(f"  masks: {masks}")
        print(f"  image sizes: {sizes}")
        print(f"  tasks: {', '.join(summary['tasks']) or 'none (transfer at 0 % labels only)'}")
        if summary["skipped"]:
            print(f"  skipped {len(summary['skipped'])}:")
            for item in summary["skipped"]:
                print(f"    {item['id']}: {item['reason']}")
