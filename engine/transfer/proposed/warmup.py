"""The translator warm-up: the translation trained alone on engine.loop, once per (translator
config, data, repetition), cached by a key of what it depends on and resumable after a kill."""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch import Tensor

from engine.loop import EpochCallback, EpochLoop
from engine.runtime.checkpoints import rng_state as ckpt_rng_state
from engine.runtime.checkpoints import save_atomic
from engine.runtime.device import (
    as_batch,
    compile_in_place,
    prepare_device,
    resolve_device,
    torch_threads,
)
from engine.transfer.proposed.diagnostics import (
    adversarial_balance,
    format_balance,
    format_losses,
    saturation_report,
    save_translation_samples,
    watch_saturation,
)
from engine.transfer.proposed.gan import (
    LossSums,
    TranslationTrainer,
    build_translator_from_config,
    check_finite,
    device_batches,
    paired_batches,
)
from errors import UserError
from models.registry import load_torch_file
from models.translators.base import Translator
from protocol.config import translator_arguments, warmup_identity
from protocol.run_dir import last_checkpoint_path, translator_checkpoint_name, translator_samples_name

if TYPE_CHECKING:
    from data_io.cache import CachedDataset
    from protocol.config import RunConfig

log = logging.getLogger(__name__)


# Bump when the warm-up's meaning changes, so that cached translators are not reused wrongly.
WARMUP_VERSION = 2


def translator_key(cfg: "RunConfig", source_key: str, target_key: str) -> str:
    """The cache key of a warmed translator: its config (protocol.config.warmup_identity; task and
    label fraction are absent, so every task and fraction of a repetition reuses one warm-up,
    paper §V-C) and the cache keys of the source and target data it trains on."""
    identity = {"version": WARMUP_VERSION, **warmup_identity(cfg), "source": source_key, "target_data": target_key}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return digest[:16]


def warmup_translator(cfg: "RunConfig", source: "CachedDataset", target: "CachedDataset", out_dir: str | Path,
                      device: torch.device | None = None, callbacks: Sequence[EpochCallback] = (),
                      run_dir: Path | None = None) -> Path:
    """Train the translator alone for `cfg.warmup_epochs` on the source and target training
    splits (target labels unused), or return the cached result of an identical earlier warm-up.
    An interrupted warm-up resumes from its checkpoints/last.pt in `run_dir` (default
    `out_dir`/warmup-KEY: a folder shared by several warm-ups keeps them apart), removed once the
    translator is saved; `callbacks` are called after every epoch, as a training run's.

    Returns the path of a translator checkpoint; samples of its translations lie beside it.
    """
    from engine.data.transfer import transfer_splits

    key = translator_key(cfg, source.key, target.key)
    out_dir = Path(out_dir)
    path = out_dir / translator_checkpoint_name(cfg.translator, key)
    if path.is_file():
        log.info("warm-up %s: reusing %s", key, path)
        return path
    source_split, target_split = transfer_splits(cfg, len(source.ids), len(target.ids))
    images_a, images_b = source.images[source_split.train], target.images[target_split.train]
    device = device or resolve_device(cfg.device)
    own_folder = run_dir is None
    run_dir = out_dir / f"warmup-{key}" if own_folder else Path(run_dir)
    with torch_threads(cfg.num_threads):
        run = WarmupRun(cfg, images_a, images_b, device, run_dir)
        translator = run.run(callbacks)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_translator(path, translator, cfg, key, run.history)
    save_translation_samples(translator, images_a, images_b, out_dir / translator_samples_name(cfg.translator, key))
    # Its result is the translator checkpoint: what resumed it goes.
    shutil.rmtree(run_dir if own_folder else last_checkpoint_path(run_dir).parent, ignore_errors=True)
    return path


class WarmupRun(EpochLoop):
    """The translator alone on engine.loop: the discriminative and generative steps alternated for
    `cfg.warmup_epochs` epochs (the images moved to the device once; losses read once per epoch).
    Nothing is selected (the warm-up's result is its last epoch); its last.pt (translator,
    optimisers, both random streams) resumes it exactly."""

    def __init__(self, cfg: "RunConfig", images_a: np.ndarray, images_b: np.ndarray, device: torch.device,
                 run_dir: Path):
        self.cfg, self.device, self.run_dir = cfg, device, Path(run_dir)
        torch.manual_seed(cfg.seed)
        # The index draws' stream runs on across epochs; last.pt carries its state.
        self.rng = np.random.default_rng(cfg.seed)
        prepare_device(device)
        self.translator = build_translator_from_config(cfg).to(device).train()
        if cfg.compile:
            compile_in_place(self.translator)
        self.trainer = TranslationTrainer(self.translator, cfg)
        self.scaler = self.trainer.generator_scaler  # restored with the others by `trainer.load_state_dict`
        self.n_a, self.n_b = len(images_a), len(images_b)
        self.all_a, self.all_b = as_batch(images_a, device), as_batch(images_b, device)
        self.start_bookkeeping(cfg.checkpoint_every_s)

    @property
    def total_epochs(self) -> int:
        return self.cfg.warmup_epochs

    def describe(self) -> str:
        return f"{self.cfg.translator} warm-up"

    def read_state(self, path: Path) -> dict[str, Any]:
        state = load_torch_file(path, "translator warm-up checkpoint")
        if not isinstance(state, dict) or "translator_state" not in state:
            raise UserError(f"{path}: not a translator warm-up checkpoint")
        return state

    def begin(self) -> bool:
        """Resume from last.pt if there is one; whether it resumed."""
        state = self.read_last()
        if state is not None:
            self.translator.load_state_dict(state["translator_state"])
            self.translator.load_training_state(state["translator_training_state"])
            self.trainer.load_state_dict(state["optimizers"])
            self.rng.bit_generator.state = state["index_rng"]
            self.restore_progress(state)
            log.info("resuming the %s warm-up in %s from epoch %d", self.cfg.translator, self.run_dir, self.epoch)
        log.info("warming up %s (width %d) on %s: %d source / %d target images, %d epochs", self.cfg.translator,
                 self.cfg.translator_width, self.device, self.n_a, self.n_b, self.cfg.warmup_epochs)
        return state is not None

    def finish(self, epochs_trained: int) -> Translator:
        return self.translator.eval()

    # --- one epoch's batches and steps (engine.loop.EpochSteps) ---
    def epoch_batches(self) -> list[tuple[Tensor, ...]]:
        self.epoch_sums = LossSums()
        return device_batches(paired_batches(self.n_a, self.n_b, self.cfg.batch_size, self.rng), self.device)

    def training_step(self, batch: tuple[Tensor, ...]) -> None:
        index_a, index_b = batch
        a, b = self.all_a[index_a], self.all_b[index_b]
        self.epoch_sums.add({**self.trainer.discriminative_step(a, b), **self.trainer.generative_step(a, b)})

    def epoch_end(self, started: float) -> dict[str, Any]:
        losses = self.epoch_sums.means()
        check_finite(losses, f"translator warm-up epoch {self.epoch + 1}")
        return {**losses, **adversarial_balance(losses, self.cfg.w_adv), "seconds": time.perf_counter() - started}

    # --- nothing is judged: the log and the saturation watch ---
    def evaluates(self, epoch: int) -> bool:
        return False

    def best_metrics(self) -> dict[str, Any]:
        return {}

    def log_epoch(self, metrics: dict[str, Any]) -> None:
        losses = {name: metrics[name] for name in self.epoch_sums.sums}
        log.info("warm-up epoch %d/%d  %s | %s  %.1f s", self.epoch, self.cfg.warmup_epochs, format_losses(losses),
                 format_balance(adversarial_balance(losses, self.cfg.w_adv)), metrics["seconds"])

    def after_epoch(self) -> None:
        watch_saturation(self.history, "warm-up")

    def _last_state(self) -> dict[str, Any]:
        return {"config": self.cfg.to_dict(), "epoch": self.epoch, "translator_state": self.translator.state_dict(),
                "translator_training_state": self.translator.training_state(), "optimizers": self.trainer.state_dict(),
                "rng": ckpt_rng_state(), "index_rng": self.rng.bit_generator.state, "best_val_jaccard": self.best_val,
                "best_epoch": self.best_epoch, "best": None, "history": self.history, "duration_s": self.duration_s}


def save_translator(path: Path, translator: Translator, cfg: "RunConfig", key: str, history: list[dict]) -> Path:
    """The warm-up's checkpoint; `saturation` is saturation_report(history) (None when healthy),
    which every transfer run that starts from it carries into its result.json."""
    payload = {
        "translator": cfg.translator, "kwargs": translator_arguments(cfg), "state_dict": translator.state_dict(),
        "key": key, "warmup_epochs": cfg.warmup_epochs, "image_size": cfg.image_size, "history": history,
        "config": cfg.to_dict(), "saturation": saturation_report(history, "warm-up"),
    }
    return save_atomic(payload, path)
