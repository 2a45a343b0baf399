"""Dependency release without a stage barrier: the order ready trials go out in, what a failed
dependency does to its dependants, and the searcher's state across a resume (no Ray runtime)."""
from __future__ import annotations

from ray.tune.search import Searcher

from protocol.config import make_config
from protocol.grid import SEGMENTATION, TRANSFER, TRANSLATOR_WARMUP, build_grid
from protocol.store import RunStore
from sweep.progress import SweepProgress, report_progress_to
from sweep.scheduling import DependencyQueue, DependencyRelease, release_order


def _grid():
    """U-Net and FCN on lungs, folds 0 and 1; proposed and source_only at 0 % for repetition 0."""
    return build_grid("all", make_config("smoke"), models=["unet", "fcn"], tasks=["lungs"], folds=[0, 1],
                      repetitions=[0], methods=["proposed", "source_only"], fractions=[0])


def _named(grid):
    specs = grid.runnable()
    m_a = next(s for s in specs if s.kind == SEGMENTATION and s.config.model == "unet" and s.config.fold == 0)
    warmup = next(s for s in specs if s.kind == TRANSLATOR_WARMUP)
    proposed = next(s for s in specs if s.kind == TRANSFER and s.config.method == "proposed")
    source_only = next(s for s in specs if s.kind == TRANSFER and s.config.method == "source_only")
    others = [s for s in specs if s.kind == SEGMENTATION and s is not m_a]
    return specs, m_a, warmup, proposed, source_only, others


def test_ready_trials_go_out_dependencies_first_then_the_deepest():
    specs, m_a, warmup, proposed, source_only, others = _named(_grid())
    order = release_order(specs)
    # What others wait for comes first; transfer trials (deeper) before Table I trials nothing needs.
    assert set(order[:2]) == {m_a.trial_id, warmup.trial_id}
    assert order.index(proposed.trial_id) < min(order.index(s.trial_id) for s in others)


def test_a_trial_is_released_when_its_own_dependencies_are_done():
    specs, m_a, warmup, proposed, source_only, others = _named(_grid())
    queue = DependencyQueue(specs)
    first, second = queue.pop_ready(), queue.pop_ready()
    assert {first.trial_id, second.trial_id} == {m_a.trial_id, warmup.trial_id}
    queue.finish(m_a.trial_id)
    # source_only needs M_A only: it goes out now, ahead of the Table I trials nothing needs,
    # while the warm-up (proposed's other dependency) still runs.
    assert queue.pop_ready().trial_id == source_only.trial_id
    assert queue.pop_ready().trial_id in {s.trial_id for s in others}
    queue.finish(warmup.trial_id)
    assert queue.pop_ready().trial_id == proposed.trial_id


def test_a_failed_dependency_drops_its_dependants_unrun():
    specs, m_a, warmup, proposed, source_only, others = _named(_grid())
    queue = DependencyQueue(specs)
    queue.pop_ready(), queue.pop_ready()
    assert queue.fail(warmup.trial_id) == [proposed.trial_id]
    queue.finish(m_a.trial_id)
    released = []
    while (spec := queue.pop_ready()) is not None:
        released.append(spec.trial_id)
        queue.finish(spec.trial_id)
    assert proposed.trial_id not in released and source_only.trial_id in released
    assert queue.exhausted and queue.failed == {proposed.trial_id: warmup.trial_id}


def test_dependencies_already_in_out_count_as_done():
    specs, m_a, warmup, proposed, source_only, others = _named(_grid())
    queue = DependencyQueue([proposed, source_only], finished={m_a.trial_id, warmup.trial_id})
    assert {queue.pop_ready().trial_id, queue.pop_ready().trial_id} == {proposed.trial_id, source_only.trial_id}


def test_a_trial_whose_dependency_is_neither_planned_nor_done_is_dropped_not_waited_for():
    specs, m_a, warmup, proposed, source_only, others = _named(_grid())
    queue = DependencyQueue([proposed, source_only])  # M_A and the warm-up: not planned, not in OUT
    assert queue.pop_ready() is None and queue.exhausted
    assert queue.failed == {proposed.trial_id: m_a.trial_id, source_only.trial_id: m_a.trial_id}


def test_searcher_waits_releases_and_resumes_from_its_saved_state(tmp_path):
    grid = _grid()
    specs, m_a, warmup, proposed, source_only, others = _named(grid)
    out = tmp_path / "out"
    lines: list[str] = []
    report_progress_to(SweepProgress(total=len(specs), say=lines.append))
    searcher = DependencyRelease(specs, {s.trial_id: {"spec": s.trial_id} for s in specs}, str(out))
    handed = {f"t{i}": searcher.suggest(f"t{i}") for i in range(2)}
    assert sorted(c["trial"]["spec"] for c in handed.values()) == sorted([m_a.trial_id, warmup.trial_id])
    assert searcher.suggest("t2")["trial"]["spec"] in {s.trial_id for s in others}
    tune_id = {c["trial"]["spec"]: t for t, c in handed.items()}

    # M_A ends without publishing anything: a failure, which drops both transfer trials.
    try:
        searcher.on_trial_complete(tune_id[m_a.trial_id])
    finally:
        report_progress_to(None)
    assert sorted(lines) == sorted(f"[sweep] not running {t}: its dependency {m_a.trial_id} failed"
                                   for t in (proposed.trial_id, source_only.trial_id))

    # Saved, restored into a fresh searcher (as Tune does on --resume), it goes on where it was.
    searcher.save(str(tmp_path / "state.pkl"))
    again = DependencyRelease(specs, {s.trial_id: {"spec": s.trial_id} for s in specs}, str(out))
    again.restore(str(tmp_path / "state.pkl"))
    store = RunStore(out)
    (tmp_path / "run").mkdir()
    store.publish(warmup, tmp_path / "run", {})
    again.on_trial_complete(tune_id[warmup.trial_id])  # published: done
    assert again.queue.finished == {warmup.trial_id}
    rest = [again.suggest(f"r{i}") for i in range(3)]
    assert [c is None for c in rest] == [False, False, True]  # the last two Table I trials; "t2" still runs
    for tune_trial in ("t2", "r0", "r1"):
        store.publish(again.queue.specs[again.handed_out[tune_trial][0]], tmp_path / "run", {})
        again.on_trial_complete(tune_trial)
    assert again.suggest("last") == Searcher.FINISHED


def test_ray_messages_go_to_the_latest_sweeps_log_only(tmp_path):
    """A process that runs two sweeps (a notebook, a reused Ray worker) sends Ray's messages to the
    second sweep's log file from then on, not to both, and none of them to the console."""
    import logging

    from sweep.progress import RAY_LOGGERS, send_ray_messages_to

    saved = {name: (list(logging.getLogger(name).handlers), logging.getLogger(name).propagate)
             for name in RAY_LOGGERS}
    try:
        first, second = tmp_path / "a" / "ray.log", tmp_path / "b" / "ray.log"
        send_ray_messages_to(first)
        send_ray_messages_to(first)  # idempotent
        logging.getLogger("ray.tune").warning("one")
        send_ray_messages_to(second)
        logging.getLogger("ray.tune").warning("two")
        assert len([h for h in logging.getLogger("ray.tune").handlers if isinstance(h, logging.FileHandler)]) == 1
        assert "one" in first.read_text() and "two" not in first.read_text()
        assert "two" in second.read_text() and "one" not in second.read_text()
        assert not logging.getLogger("ray.tune").propagate
    finally:
        for name, (handlers, propagate) in saved.items():
            logger = logging.getLogger(name)
            for handler in logger.handlers:
                if handler not in handlers:
                    handler.close()
            logger.handlers[:] = handlers
            logger.propagate = propagate


def test_fuse_groups_ready_trials_of_one_key_and_never_waits_for_a_sibling():
    """--fuse 3 over Table I folds of two networks and a transfer trial that needs fold 0's M_A:
    one network's ready folds go out together; the transfer trial, not ready, is not grouped and
    is released on its own once its dependency is done."""
    from sweep.fusing import group_key

    base = make_config("smoke")
    grid = build_grid("all", base, models=["unet", "fcn"], tasks=["lungs"], folds=[0, 1, 2, 3], repetitions=[0],
                      methods=["finetune"], fractions=[50])
    specs = grid.runnable()
    searcher = DependencyRelease(specs, {s.trial_id: {"spec": s.trial_id} for s in specs}, "unused", fuse=3)
    first = searcher.suggest("g0")
    members = [m["spec"] for m in first["members"]]
    assert len(members) == 3 and first["trial"]["spec"] == members[0]
    assert len({group_key(grid.trials[m]) for m in members}) == 1
    handed = [m for c in (first, searcher.suggest("g1"), searcher.suggest("g2")) if c
              for m in [e["spec"] for e in (c.get("members") or [c["trial"]])]]
    segmentation = {s.trial_id for s in specs if s.kind == SEGMENTATION}
    assert set(handed) <= segmentation and len(handed) == len(set(handed))
    # Tune trial -> our ids, for every member: a group's completion settles each member.
    assert searcher.handed_out["g0"] == members


def test_a_workers_exit_inside_a_callback_prints_nothing_and_other_ignored_errors_still_print(tmp_path):
    """Ray's SIGTERM handler raises SystemExit wherever a stopping worker is; inside a weakref
    callback Python prints it as an ignored exception, on the sweep's console. A process whose Ray
    messages go to the sweep's log drops that print, and only that one."""
    import subprocess
    import sys

    script = f"""
import sys, weakref
from sweep.progress import send_ray_messages_to
send_ray_messages_to({str(tmp_path / "ray.log")!r})
installed = sys.unraisablehook
send_ray_messages_to({str(tmp_path / "ray.log")!r})
assert sys.unraisablehook is installed, "a second sweep in the process wraps the hook again"
class Thing:
    pass
def raising(error):
    def callback(_):
        raise error
    return callback
for error in (SystemExit(1), ValueError("a real ignored error")):
    thing = Thing()
    ref = weakref.ref(thing, raising(error))
    del thing
print("done")
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "done"
    assert "SystemExit" not in run.stderr
    assert "ValueError: a real ignored error" in run.stderr
    assert run.stderr.count("Exception ignored") == 1
