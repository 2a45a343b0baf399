"""Whole transfer runs on tiny data: outputs, not-applicable cells, validation split, warm-up reuse,
divergence, resumption."""
import json
import logging
import pickle
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch

from engine.data.transfer import transfer_data
from engine.evaluation.label_budget import label_plan
from engine.transfer.dispatch import NotApplicable, train_transfer
from engine.transfer.proposed.gan import TrainingDiverged
from engine.transfer.proposed.warmup import translator_key, warmup_translator


def test_warm_up_is_trained_once_and_reused_by_other_tasks_and_fractions(make_cfg, source, target, tmp_path, caplog):
    cfg = make_cfg()
    with caplog.at_level(logging.INFO, logger="engine.transfer.proposed.warmup"):
        first = warmup_translator(cfg, source, target, tmp_path)
    assert any("warm-up epoch" in r.getMessage() for r in caplog.records)
    stamp = first.stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="engine.transfer.proposed.warmup"):
        again = warmup_translator(cfg.replace(task="heart", label_fraction=5.0, method="finetune"), source, target,
                                  tmp_path)
    assert again == first and first.stat().st_mtime_ns == stamp
    assert not any("warm-up epoch" in r.getMessage() for r in caplog.records)
    # What does change the translation gets its own warm-up.
    assert (translator_key(cfg.replace(warmup_epochs=2), source.key, target.key)
            != translator_key(cfg, source.key, target.key))
    assert translator_key(cfg, source.key, "other-data") != translator_key(cfg, source.key, target.key)
    assert (tmp_path / f"{first.stem}-samples" / "b_to_a.png").is_file()


def test_a_killed_warm_up_resumes_to_the_uninterrupted_translator(make_cfg, source, target, tmp_path):
    """The warm-up runs on the engine's loop: killed after an epoch's checkpoint, it starts again
    from there and ends with the translator, losses and samples of a run never interrupted (CPU)."""
    cfg = make_cfg(warmup_epochs=3, checkpoint_every_s=0)
    whole = torch.load(warmup_translator(cfg, source, target, tmp_path / "whole"), weights_only=False)

    class Killed(Exception):
        pass

    def kill_after_epoch_2(epoch, metrics, run_dir):
        if epoch == 2:
            raise Killed

    with pytest.raises(Killed):
        warmup_translator(cfg, source, target, tmp_path / "killed", callbacks=[kill_after_epoch_2])
    left = list((tmp_path / "killed").glob("warmup-*/checkpoints/last.pt"))
    assert len(left) == 1 and torch.load(left[0], weights_only=False)["epoch"] == 2
    epochs = []
    resumed = torch.load(warmup_translator(cfg, source, target, tmp_path / "killed",
                                           callbacks=[lambda epoch, metrics, run_dir: epochs.append(epoch)]),
                         weights_only=False)
    assert epochs == [3]  # only the epoch the kill left
    assert not list((tmp_path / "killed").glob("warmup-*")), "its resumable state goes once the translator is saved"
    assert resumed["state_dict"].keys() == whole["state_dict"].keys()
    assert all(torch.equal(resumed["state_dict"][k], whole["state_dict"][k]) for k in whole["state_dict"])
    losses = [{k: v for k, v in epoch.items() if not k.endswith("_s") and k not in ("seconds", "checkpoint_bytes")}
              for epoch in resumed["history"]]
    assert losses == [{k: v for k, v in epoch.items() if not k.endswith("_s") and k not in ("seconds",
                                                                                          "checkpoint_bytes")}
                      for epoch in whole["history"]]
    assert [e["epoch"] for e in resumed["history"]] == [1, 2, 3]


@pytest.mark.parametrize("method", ["finetune", "scratch"])
def test_methods_that_need_target_labels_are_not_applicable_at_zero(method, make_cfg, data_for, segmenter_checkpoint,
                                                                    tmp_path):
    cfg = make_cfg(method=method, label_fraction=0.0)
    with pytest.raises(NotApplicable, match="0 %"):
        train_transfer(cfg, data_for(cfg), tmp_path / "run", segmenter_checkpoint)
    assert not (tmp_path / "run" / "result.json").exists()


def test_a_fraction_of_labels_the_target_does_not_have_is_not_applicable(make_cfg, source, target,
                                                                         segmenter_checkpoint, tmp_path):
    cfg = make_cfg(task="heart", label_fraction=5.0, method="proposed")
    with pytest.raises(NotApplicable, match="no heart labels"):
        train_transfer(cfg, transfer_data(cfg, source, target), tmp_path, segmenter_checkpoint)


@pytest.mark.parametrize("method,fraction,val_split", [
    ("proposed", 0.0, "source"), ("proposed", 100.0, "source"), ("source_only", 0.0, "source"),
    ("self_training", 0.0, None), ("finetune", 50.0, None), ("scratch", 50.0, None)])
def test_each_method_writes_the_supervised_run_layout(method, fraction, val_split, make_cfg, data_for,
                                                      segmenter_checkpoint, warmed_translator, tmp_path):
    cfg = make_cfg(method=method, label_fraction=fraction)
    data = data_for(cfg)
    result = train_transfer(cfg, data, tmp_path / "run", segmenter_checkpoint, warmed_translator)
    images = pd.read_parquet(tmp_path / "run" / "images.parquet")
    assert list(images["image_id"]) == data.target_test_ids
    assert set(images["method"]) == {method} and set(images["label_fraction"]) == {fraction}
    assert np.isclose(images["jaccard"].mean(), result.test_jaccard_mean)
    summary = json.loads((tmp_path / "run" / "result.json").read_text())
    assert summary["config"]["method"] == method and summary["n_test_images"] == len(data.target_test_ids)
    assert (tmp_path / "run" / "best.pt").is_file()
    assert len(list((tmp_path / "run" / "overlays").glob("*.png"))) > 0
    assert ((tmp_path / "run" / "translations" / "b_to_a.png").is_file()) == (method == "proposed")
    if val_split is not None:
        assert result.history[-1]["val_split"] == val_split


def test_validation_never_uses_the_test_split(make_cfg, data_for, segmenter_checkpoint, warmed_translator, tmp_path):
    """Corrupting the test images must not change the chosen epoch or its validation score."""
    cfg = make_cfg(method="proposed", label_fraction=50.0, transfer_epochs=2)
    clean = train_transfer(cfg, data_for(cfg), tmp_path / "clean", segmenter_checkpoint, warmed_translator)
    corrupted = data_for(cfg)
    corrupted.target_test_images = -corrupted.target_test_images
    other = train_transfer(cfg, corrupted, tmp_path / "corrupted", segmenter_checkpoint, warmed_translator)
    assert [h["val_jaccard"] for h in clean.history] == [h["val_jaccard"] for h in other.history]


def test_unlabelled_target_task_gives_overlays_and_no_numbers(make_cfg, source, target, tmp_path, warmed_translator,
                                                              make_m_a):
    cfg = make_cfg(task="heart", label_fraction=0.0, method="proposed")
    heart_model = make_m_a(tmp_path / "m_a_heart.pt", source, task="heart")
    result = train_transfer(cfg, transfer_data(cfg, source, target), tmp_path / "run", heart_model, warmed_translator)
    assert result.n_test_images == 0 and np.isnan(result.test_jaccard_mean)
    assert len(list((tmp_path / "run" / "overlays").glob("*.png"))) > 0


def test_nan_in_the_data_fails_the_run_with_a_reason(make_cfg, data_for, segmenter_checkpoint, warmed_translator,
                                                     tmp_path):
    cfg = make_cfg()
    data = data_for(cfg)
    data.source_train_images = data.source_train_images.copy()
    data.source_train_images[:] = np.nan
    with pytest.raises(TrainingDiverged, match="not finite"):
        train_transfer(cfg, data, tmp_path / "run", segmenter_checkpoint, warmed_translator)


def test_a_run_resumes_from_its_last_checkpoint(make_cfg, data_for, segmenter_checkpoint, warmed_translator, tmp_path):
    cfg = make_cfg(transfer_epochs=2)
    straight = train_transfer(cfg, data_for(cfg), tmp_path / "straight", segmenter_checkpoint, warmed_translator)
    train_transfer(cfg.replace(transfer_epochs=1), data_for(cfg), tmp_path / "resumed", segmenter_checkpoint,
                   warmed_translator)
    resumed = train_transfer(cfg, data_for(cfg), tmp_path / "resumed", segmenter_checkpoint, warmed_translator)
    assert resumed.epochs_trained == 1
    assert resumed.test_jaccard_mean == pytest.approx(straight.test_jaccard_mean)
    assert [h["val_jaccard"] for h in resumed.history] == pytest.approx([h["val_jaccard"] for h in straight.history])


def test_m_a_for_another_task_is_refused_naming_the_file(make_cfg, source, target, segmenter_checkpoint, tmp_path):
    cfg = make_cfg(task="heart", method="source_only")
    with pytest.raises(ValueError, match=str(segmenter_checkpoint)):
        train_transfer(cfg, transfer_data(cfg, source, target), tmp_path, segmenter_checkpoint)


def test_proposed_checkpoints_are_bounded_and_carry_the_best_epoch(make_cfg, data_for, segmenter_checkpoint,
                                                                   warmed_translator, tmp_path):
    # The paper's selection always keeps an adapted epoch: best.pt is then that epoch's checkpoint.
    cfg = make_cfg(transfer_epochs=3, checkpoint_every_s=3600, selection="source")
    seen = []

    def callback(epoch, metrics, run_dir):
        seen.append((epoch, metrics.get("checkpoint_bytes"), (run_dir / "best.pt").exists()))

    result = train_transfer(cfg, data_for(cfg), tmp_path / "run", segmenter_checkpoint, warmed_translator,
                            callbacks=[callback])
    # One checkpoint, after the last epoch; best.pt only when the run ends.
    assert [(epoch, size is not None, best) for epoch, size, best in seen] == \
        [(1, False, False), (2, False, False), (3, True, False)]
    last_path = tmp_path / "run" / "checkpoints" / "last.pt"
    assert [p.name for p in last_path.parent.iterdir()] == ["last.pt"] and seen[-1][1] == last_path.stat().st_size
    import torch

    last = torch.load(last_path, weights_only=False)
    assert {"segmenter_optimizer", "translation_optimizers", "rng", "translator", "best"} <= set(last)
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=False)
    assert best["epoch"] == last["best"]["epoch"] == result.best_epoch
    assert all(torch.equal(v, last["best"]["translator"]["state_dict"][k])
               for k, v in best["translator"]["state_dict"].items())
    every_epoch = []
    train_transfer(cfg.replace(checkpoint_every_s=0), data_for(cfg), tmp_path / "every", segmenter_checkpoint,
                   warmed_translator, callbacks=[lambda e, m, d: every_epoch.append("checkpoint_bytes" in m)])
    assert every_epoch == [True, True, True]


def test_proposed_epoch_computes_what_a_plain_per_batch_loop_computes(make_cfg, data_for, segmenter_checkpoint,
                                                                       warmed_translator, tmp_path):
    """The engine keeps the arrays on the device, draws an epoch's indices at once and sums the
    losses on the device; a loop that copies every batch and reads every loss, as the engine
    did before, must end with the same weights and the same epoch losses (CPU)."""
    import torch

    from engine.runtime.device import as_batch
    from engine.supervised import epoch_seed
    from engine.transfer.proposed.gan import paired_batches
    from engine.transfer.proposed.run import ProposedRun
    from models.registry import read_segmenter_checkpoint

    cfg = make_cfg(label_fraction=50.0)
    data = data_for(cfg)
    runs = [ProposedRun(cfg, data, label_plan(cfg, data), tmp_path / name,
                        read_segmenter_checkpoint(segmenter_checkpoint), warmed_translator)
            for name in ("engine", "plain")]
    losses = runs[0].train_epoch()

    plain = runs[1]
    plain.model.train()
    torch.manual_seed(epoch_seed(cfg.seed, 0))
    rng = np.random.default_rng(epoch_seed(cfg.seed, 0))
    augmentation = torch.Generator().manual_seed(epoch_seed(cfg.seed, 0))  # the supervised step's recipe
    records = []
    for index_a, index_b in paired_batches(len(data.source_train_images), len(data.target_train_images),
                                           cfg.batch_size, rng):
        a, b = as_batch(data.source_train_images[index_a], plain.device), as_batch(data.target_train_images[index_b],
                                                                                   plain.device)
        record = {k: float(v) for k, v in plain.translation.discriminative_step(a, b).items()}
        record.update({k: float(v) for k, v in plain.translation.generative_step(a, b).items()})
        index = rng.integers(0, data.n_labelled, size=len(index_b))
        masks = torch.from_numpy(data.source_train_masks[index_a]).long()
        labelled = as_batch(data.target_labelled_images[index], plain.device)
        labelled_masks = torch.from_numpy(data.target_labelled_masks[index]).long()
        record.update({k: float(v) for k, v in plain.supervised_step(a, masks, labelled, labelled_masks,
                                                                     augmentation).items()})
        records.append(record)
    assert set(losses) == set(records[0]) | {"D_s", "G_s", "S_s"} | (
        {"balance_d", "balance_g", "saturated"} if cfg.w_adv > 0 else set())
    for name in records[0]:
        assert losses[name] == pytest.approx(np.mean([r[name] for r in records]), rel=1e-12, abs=1e-15)
    engine_state, plain_state = runs[0].model.state_dict(), plain.model.state_dict()
    assert all(torch.equal(engine_state[k], plain_state[k]) for k in plain_state)


@pytest.mark.slow
def test_compile_option_trains_both_kinds_of_run(make_cfg, data_for, segmenter_checkpoint, warmed_translator,
                                                 tmp_path, monkeypatch):
    """compile=true goes through torch.compile (dynamo + AOTAutograd); the aot_eager backend
    stands in for inductor, whose C++ build takes about a minute here (it ran: same losses to 1e-6)."""
    import torch

    original = torch.nn.Module.compile
    compiled = []

    def aot_eager(module, *args, **kwargs):
        compiled.append(type(module).__name__)
        return original(module, backend="aot_eager")

    monkeypatch.setattr(torch.nn.Module, "compile", aot_eager)
    torch._dynamo.reset()
    results = {}
    for method, fraction in (("proposed", 50.0), ("finetune", 50.0)):
        for compile_ in (False, True):
            cfg = make_cfg(method=method, label_fraction=fraction, compile=compile_)
            results[method, compile_] = train_transfer(cfg, data_for(cfg), tmp_path / f"{method}-{compile_}",
                                                       segmenter_checkpoint, warmed_translator)
    assert "UNet" in compiled and any("Discriminator" in name for name in compiled)
    for method in ("proposed", "finetune"):
        plain, fast = results[method, False], results[method, True]
        assert fast.test_jaccard_mean == pytest.approx(plain.test_jaccard_mean, abs=1e-4)
        # Checkpoints keep the plain network's keys: a compiled run's best.pt loads into a fresh model.
        best = torch.load(fast.run_dir / "best.pt", weights_only=False)
        assert not any("_orig_mod" in key for key in best["state_dict"])
    torch._dynamo.reset()


# A child process that runs a proposed transfer and SIGKILLs itself once epoch `kill_after` is on disk.
KILLED_TRANSFER = textwrap.dedent("""
    import os, pickle, signal, sys
    from engine.transfer.dispatch import train_transfer

    with open(sys.argv[1], "rb") as handle:
        cfg, data, segmenter, translator = pickle.load(handle)
    kill_after = int(sys.argv[3])

    def die(epoch, metrics, run_dir):
        if epoch == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    train_transfer(cfg, data, sys.argv[2], segmenter, translator, callbacks=[die])
""")


@pytest.mark.slow
@pytest.mark.parametrize("translator,w_semantic", [("munit", 0.0), ("cyclegan", 0.0), ("munit", 0.5)],
                         ids=["munit", "cyclegan", "munit-semantic"])
def test_a_killed_proposed_run_resumes_to_the_uninterrupted_result(translator, w_semantic, make_cfg, source, target,
                                                                    data_for, segmenter_checkpoint, tmp_path):
    # last.pt every epoch; the semantic term's discriminator, optimiser and scalers travel in it too.
    cfg = make_cfg(translator=translator, transfer_epochs=3, checkpoint_every_s=0, w_semantic=w_semantic)
    warmed = warmup_translator(cfg, source, target, tmp_path / "translators")
    if translator == "cyclegan":
        # A pool of two past fakes is full after the first step, so from then on every
        # discriminative step draws from the pool and its random generator: exactly the state a
        # resumed run must get back.
        payload = torch.load(warmed, weights_only=True)
        payload["kwargs"]["pool_size"] = 2
        torch.save(payload, warmed)
    inputs = tmp_path / "inputs.pkl"
    inputs.write_bytes(pickle.dumps((cfg, data_for(cfg), segmenter_checkpoint, warmed)))
    killed = tmp_path / "killed"
    child = subprocess.run([sys.executable, "-c", KILLED_TRANSFER, str(inputs), str(killed), "1"],
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert torch.load(killed / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1
    assert not (killed / "result.json").exists()

    resumed = train_transfer(cfg, data_for(cfg), killed, segmenter_checkpoint, warmed)
    straight = train_transfer(cfg, data_for(cfg), tmp_path / "straight", segmenter_checkpoint, warmed)
    assert resumed.epochs_trained == 2 and straight.epochs_trained == 3
    losses = [name for name in straight.history[0]
              if name.startswith(("D_", "G_", "S_", "SEM_")) and not name.endswith("_s")]
    assert "D_total" in losses and ("SEM_d" in losses) == (w_semantic > 0)
    for name in losses:
        assert [h[name] for h in resumed.history] == [h[name] for h in straight.history], name
    assert [h["val_jaccard"] for h in resumed.history] == [h["val_jaccard"] for h in straight.history]
    assert (resumed.best_epoch, resumed.test_jaccard_mean) == (straight.best_epoch, straight.test_jaccard_mean)


def test_m_a_of_another_fold_seed_or_data_is_refused_naming_both(make_cfg, source, target, segmenter_checkpoint,
                                                                make_m_a, tmp_path):
    """--segmenter must be the U-Net of fold repetition % n_folds on the same source data: any
    other may have trained on the source validation images that choose the 0 % epoch."""
    from engine.data.transfer import transfer_data as split

    cfg = make_cfg(method="source_only", repetition=1)
    with pytest.raises(ValueError, match=rf"{segmenter_checkpoint}: M_A was trained on fold 0 of 5 .*repetition 1 "
                                         r"needs the U-Net of fold 1 of 5"):
        train_transfer(cfg, split(cfg, source, target), tmp_path / "r1", segmenter_checkpoint)
    # Repetition 5 uses fold 5 % 5 = 0 again: accepted.
    repeated = make_cfg(method="source_only", repetition=5)
    assert train_transfer(repeated, split(repeated, source, target), tmp_path / "r5",
                          segmenter_checkpoint).n_test_images
    other_seed = make_m_a(tmp_path / "seed1.pt", source, seed=1)
    with pytest.raises(ValueError, match=r"\(seed 1\).*needs the U-Net of fold 0 of 5 \(seed 0\)"):
        train_transfer(make_cfg(method="source_only"), split(make_cfg(), source, target), tmp_path / "s", other_seed)


def test_m_a_trained_on_other_source_data_or_without_a_record_is_refused(make_cfg, source, target, make_m_a,
                                                                         tmp_path):
    import dataclasses

    cfg = make_cfg(method="source_only")
    resynthesised = dataclasses.replace(source, images=source.images[::-1].copy())  # same ids, other pixels
    assert resynthesised.fingerprint != source.fingerprint
    m_a = make_m_a(tmp_path / "m_a.pt", resynthesised)
    with pytest.raises(ValueError, match=rf"on jsrt data {resynthesised.fingerprint}, but .* on jsrt data "
                                         rf"{source.fingerprint}"):
        train_transfer(cfg, transfer_data(cfg, source, target), tmp_path / "run", m_a)
    old = torch.load(m_a, weights_only=True)
    del old["data"]  # as written before checkpoints recorded their data
    torch.save(old, tmp_path / "old.pt")
    with pytest.raises(ValueError, match=r"old.pt: M_A does not record the data .* `cxrsweep train --model unet "
                                         r"--task lungs --fold 0`"):
        train_transfer(cfg, transfer_data(cfg, source, target), tmp_path / "run", tmp_path / "old.pt")
