"""`--dry-run` of `run`, `tune` and `demo`: what the command would do (its trials by kind and
profile, what each asks of the cluster, the projected GPU-hours of protocol.cost, the effective
config), printed without reading data, starting Ray or writing anything. Ray-free."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from protocol.config import RunConfig, config_changes
from protocol.durations import format_duration
from protocol.grid import QUALITATIVE, SEGMENTATION, TRANSFER, TRANSLATOR_WARMUP, Grid, TrialSpec
from sweep.options import fuse_count, gpu_share

KIND_NAMES = {SEGMENTATION: "Table I", TRANSFER: "Table II", TRANSLATOR_WARMUP: "translator warm-up",
              QUALITATIVE: "Fig. 9 run"}


@dataclass
class Resources:
    """What each trial asks of the cluster (the sweep flags, or the profile's defaults)."""

    cpus: float
    gpus: float
    gpus_default: bool
    fuse: int | None = None  # None: the command does not fuse (tune, demo)
    max_concurrent: int = 0
    retries: int | None = None

    @classmethod
    def of(cls, args, profile: str) -> "Resources":
        """From a command's sweep flags; a flag the command lacks (demo: most) takes the sweep's default."""
        gpus = getattr(args, "gpus_per_trial", None)
        fuse = fuse_count(args.fuse, profile) if hasattr(args, "fuse") else None
        return cls(cpus=float(args.cpus_per_trial), gpus=gpu_share(gpus, profile), gpus_default=gpus is None,
                   fuse=fuse, max_concurrent=getattr(args, "max_concurrent", 0), retries=getattr(args, "retries", None))

    def lines(self, profile: str) -> list[str]:
        from protocol.cost import trials_per_gpu

        gpu = (f"{self.gpus:g} GPU" + (f" (profile {profile}'s default: {trials_per_gpu(self.gpus)} trials per GPU)"
                                       if self.gpus_default and 0 < self.gpus < 1 else ""))
        out = [f"each trial asks for {self.cpus:g} CPU and {gpu}; on a cluster without GPUs it runs on its CPU "
               "share (the GPU share is then ignored, with a message)"]
        extra = []
        if self.fuse is not None:
            extra.append(f"fuse {self.fuse}" + (" (every trial alone)" if self.fuse == 1 else
                                                f" (up to {self.fuse} trials of one kind as one computation)"))
        extra.append(f"at most {self.max_concurrent} at once" if self.max_concurrent else "as many at once as fit")
        if self.retries is not None:
            extra.append(f"{self.retries} retr{'y' if self.retries == 1 else 'ies'} per failed trial")
        return out + ["; ".join(extra)]


def _row_name(spec: TrialSpec) -> str:
    cfg = spec.config
    if spec.kind == SEGMENTATION:
        return f"{KIND_NAMES[SEGMENTATION]}: {cfg.model}"
    if spec.kind == TRANSFER:
        return f"{KIND_NAMES[TRANSFER]}: {cfg.method}"
    return KIND_NAMES.get(spec.kind, spec.kind)


def _epochs(specs: Sequence[TrialSpec]) -> str:
    values = sorted({s.training_epochs for s in specs})
    return ",".join(map(str, values))


def grid_lines(specs: Sequence[TrialSpec], resources: Resources) -> list[str]:
    """The trials by kind and profile with their epochs and projected GPU-hours, and the total."""
    from protocol.cost import H200, figures_do_not_fit, project

    rows: dict[tuple[str, str, str], list[TrialSpec]] = {}
    for spec in specs:
        recipe = "-" if spec.kind == TRANSLATOR_WARMUP else spec.config.augmentation  # a warm-up trains no segmenter
        rows.setdefault((_row_name(spec), spec.config.profile, recipe), []).append(spec)
    unfit = figures_do_not_fit(s.config for s in specs)
    projection = None if unfit else project(specs, resources.gpus)
    header = f"  {'trials':<28} {'profile':<8} {'training':<9} {'count':>5}  {'epochs':<8} {'GPU-hours':>9}"
    lines = [header]
    for (name, profile, recipe), group in rows.items():
        hours = f"{projection.gpu_hours(s.trial_id for s in group):9.2f}" if projection else f"{'-':>9}"
        lines.append(f"  {name:<28} {profile:<8} {recipe:<9} {len(group):>5}  {_epochs(group):<8} {hours}")
    total = f"{projection.gpu_hours():9.2f}" if projection else f"{'-':>9}"
    lines.append(f"  {'total':<48} {len(specs):>5}  {'':<8} {total}")
    lines.append("")
    if projection is None:
        lines.append(f"projected GPU-hours: none ({unfit}; protocol/cost.py has no figures for that scale)")
        return lines
    eff = projection.efficiency
    lines += [
        f"projected on the {H200['device']} figures (protocol/cost.py, measured by benchmarks/bench_gpu.py): "
        f"{projection.gpu_hours():.2f} GPU-hours at {projection.per_gpu} trial(s) per GPU (each at "
        f"{eff['unet']:.0%} of its speed alone, proposed-method trials and warm-ups {eff['proposed']:.0%})",
        "  wall time at least " + ", ".join(f"{format_duration(projection.wall_hours_at_least(n) * 3600)} on {n} GPU"
                                            + ("s" if n > 1 else "") for n in (1, 2, 4, 8))
        + f" (the longest dependency chain: {format_duration(projection.longest_chain_s)})",
        "  assumed where the measurement recorded nothing:",
        *(f"    - {assumption}" for assumption in H200["assumed"]),
    ]
    return lines


def config_lines(base: RunConfig, profile: str, preset: str) -> list[str]:
    changes = config_changes(base, profile, preset)
    lines = [f"effective config: profile {profile}, preset {preset}; fields that differ from RunConfig's defaults"
             + (":" if changes else ": none")]
    width = max((len(name) for name, _, _ in changes), default=0)
    lines += [f"  {name:<{width}} = {value!r:<10} ({source})" for name, value, source in changes]
    return lines


def print_grid(command: str, grid: Grid, base: RunConfig, args, say: Callable[[str], None] = print,
               notes: Sequence[str] = ()) -> int:
    """The dry run of `run` and `demo`: returns 0 (nothing started)."""
    runnable = grid.runnable()
    skipped = len(grid.not_applicable())
    say(f"[dry run] cxrsweep {command}: {len(runnable)} trials to run"
        + (f", {skipped} cells not applicable (recorded, never run)" if skipped else "")
        + "; no data read, no Ray started, nothing written")
    resources = Resources.of(args, base.profile)
    for line in grid_lines(runnable, resources):
        say(line)
    for line in resources.lines(base.profile):
        say(line)
    for line in config_lines(base, base.profile, args.preset):
        say(line)
    for note in notes:
        say(note)
    return 0


def print_tuning(cells: list[list[TrialSpec]], n_trials: int, base: RunConfig, args,
                 say: Callable[[str], None] = print) -> int:
    """The dry run of `tune`: each search's cell, its dependencies (trained first), and the cost:
    the dependencies plus `n_trials` samples of the cell (ASHA stops some early: at most that)."""
    from protocol.cost import figures_do_not_fit, project

    dependencies = list({s.trial_id: s for specs in cells for s in specs[1:]}.values())
    say(f"[dry run] cxrsweep tune: {len(cells)} search(es) of {n_trials} sample(s) each, after "
        f"{len(dependencies)} dependency trial(s); no data read, no Ray started, nothing written")
    for specs in cells:
        cell = specs[0]
        say(f"  search {cell.trial_id} ({cell.training_epochs} epochs per sample)"
            + (f", after {', '.join(d.trial_id for d in specs[1:])}" if specs[1:] else ""))
    resources = Resources.of(args, base.profile)
    unfit = figures_do_not_fit(s.config for specs in cells for s in specs)
    if unfit:
        say(f"projected GPU-hours: none ({unfit})")
    else:
        projection = project([s for specs in cells for s in specs], resources.gpus)
        hours = projection.gpu_hours(d.trial_id for d in dependencies) + n_trials * projection.gpu_hours(
            specs[0].trial_id for specs in cells)
        say(f"projected: at most {hours:.2f} GPU-hours on the protocol/cost.py figures (every sample trained to the "
            "end; ASHA stops the weaker ones early)")
    for line in resources.lines(base.profile):
        say(line)
    for line in config_lines(base, base.profile, args.preset):
        say(line)
    return 0
