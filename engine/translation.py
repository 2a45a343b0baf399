"""Training of the unpaired translator alone: the discriminative and generative steps, the
warm-up that every transfer task shares, and the PNG samples a person checks convergence on.

Freezing is done here, and only here, by switching `requires_grad`: a "freeze" that merely
skips an optimiser step still lets gradients (and their cost) flow, and the authors' follow-up
code had exactly that bug.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from engine.checkpoints import rng_state as ckpt_rng_state
from engine.checkpoints import save_atomic
from engine.device import adam as adam_for
from engine.device import (
    as_batch,
    autocast_for,
    compile_in_place,
    grad_scaler_for,
    load_scaler_state,
    prepare_device,
    resolve_device,
    torch_threads,
)
from engine.loop import EpochCallback, EpochLoop, TrainingDiverged
from errors import UserError
from models.registry import build_translator, load_torch_file
from models.translators.base import N_ADVERSARIAL_TERMS, Translator
from protocol.config import translator_arguments, warmup_identity
from protocol.run_dir import translator_checkpoint_name, translator_samples_name

if TYPE_CHECKING:
    from data_io.cache import CachedDataset
    from protocol.config import RunConfig

log = logging.getLogger(__name__)

# Bump when the warm-up's meaning changes, so that cached translators are not reused wrongly.
WARMUP_VERSION = 2


def build_translator_from_config(cfg: "RunConfig") -> Translator:
    return build_translator(cfg.translator, **translator_arguments(cfg))


def set_trainable(modules: Iterable[nn.Module], trainable: bool) -> None:
    for module in modules:
        for parameter in module.parameters():
            parameter.requires_grad_(trainable)


def check_finite(losses: dict[str, float], where: str) -> None:
    """Raise TrainingDiverged naming the terms that are NaN or infinite (an epoch's mean losses)."""
    bad = {name: value for name, value in losses.items() if not math.isfinite(value)}
    if bad:
        terms = ", ".join(f"{name}={value}" for name, value in bad.items())
        raise TrainingDiverged(f"{where}: loss is not finite ({terms}); lower gan_lr / lr or check the input data")


class LossSums:
    """Each loss term summed over an epoch on the device: one host sync per epoch (`means`),
    not one per term and step."""

    def __init__(self):
        self.sums: dict[str, Tensor] = {}
        self.steps = 0

    def add(self, record: dict[str, Tensor]) -> None:
        for name, value in record.items():
            value = value.detach().to(torch.float64)
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.steps += 1

    def means(self) -> dict[str, float]:
        if not self.sums:
            return {}
        totals = torch.stack(list(self.sums.values())).cpu().tolist()
        return {name: total / self.steps for name, total in zip(self.sums, totals)}


class TranslationTrainer:
    """One translator with its two optimisers; the generator optimiser is shared with the
    supervised step of the proposed method, which also updates the generators. Steps run under
    the device's mixed precision (engine.device.autocast_for) and return their loss
    terms as tensors on the device, so that a step never waits for the GPU."""

    def __init__(self, translator: Translator, cfg: "RunConfig"):
        self.translator = translator
        self.device = next(translator.parameters()).device
        self.generator_optimizer = gan_adam(translator.generator_parameters(), self.device, cfg)
        self.discriminator_optimizer = gan_adam(translator.discriminator_parameters(), self.device, cfg,
                                                discriminator=True)
        # One loss scaler per step (float16 only): the generator optimiser is stepped twice per batch.
        self.generator_scaler = grad_scaler_for(self.device)
        self.discriminator_scaler = grad_scaler_for(self.device)

    def discriminative_step(self, a: Tensor, b: Tensor) -> dict[str, Tensor]:
        """Generators frozen, both discriminators trained."""
        t = self.translator
        losses = adversarial_step(self.device, t.discriminator_modules(), t.generator_modules(),
                                  self.discriminator_optimizer, self.discriminator_scaler,
                                  lambda: t.discriminator_losses(a, b))
        return {f"D_{name}": value for name, value in losses.items()}

    def generative_step(self, a: Tensor, b: Tensor) -> dict[str, Tensor]:
        """Discriminators frozen, both generators trained on adversarial and reconstruction terms."""
        t = self.translator
        losses = adversarial_step(self.device, t.generator_modules(), t.discriminator_modules(),
                                  self.generator_optimizer, self.generator_scaler, lambda: t.generator_losses(a, b))
        return {f"G_{name}": value for name, value in losses.items()}

    def state_dict(self) -> dict:
        return {"generator_optimizer": self.generator_optimizer.state_dict(),
                "discriminator_optimizer": self.discriminator_optimizer.state_dict(),
                "generator_scaler": self.generator_scaler.state_dict(),
                "discriminator_scaler": self.discriminator_scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.generator_optimizer.load_state_dict(state["generator_optimizer"])
        self.discriminator_optimizer.load_state_dict(state["discriminator_optimizer"])
        load_scaler_state(self.generator_scaler, state.get("generator_scaler"))
        load_scaler_state(self.discriminator_scaler, state.get("discriminator_scaler"))


def gan_adam(parameters, device: torch.device, cfg: "RunConfig", discriminator: bool = False) -> torch.optim.Optimizer:
    """The adversarial game's Adam (gan_lr, gan_beta1/2, gan_weight_decay). Two time scales
    (Heusel et al., 2017): a discriminator may learn at `d_lr_ratio` times the generators' rate."""
    lr = cfg.gan_lr * (cfg.d_lr_ratio if discriminator else 1.0)
    return adam_for(parameters, device, lr=lr, betas=(cfg.gan_beta1, cfg.gan_beta2), weight_decay=cfg.gan_weight_decay)


def adversarial_step(device: torch.device, trained, frozen, optimizer: torch.optim.Optimizer,
                     scaler: torch.amp.GradScaler,
                     compute_losses: Callable[[], dict[str, Tensor]]) -> dict[str, Tensor]:
    """One step of one side of an adversarial game under the device's mixed precision: `frozen`
    frozen before the forward pass (it builds no graph and gets no gradient), `trained` trained
    on `compute_losses()["total"]`. Returns the detached loss terms."""
    set_trainable(frozen, False)
    set_trainable(trained, True)
    optimizer.zero_grad(set_to_none=True)
    with autocast_for(device):
        losses = compute_losses()
    scaler.scale(losses["total"]).backward()
    scaler.step(optimizer)
    scaler.update()
    return {name: value.detach() for name, value in losses.items()}


class SemanticAdversary:
    """The optional semantic-aware adversarial term (SeUDA, Chen et al., 2018), `w_semantic` > 0:
    a mask discriminator D_M learns to tell source label masks from M_A's predictions on G_BA(b),
    and G_BA is trained to make those predictions look like real lung masks. As in SeUDA the
    segmenter is frozen for this term (it cannot satisfy D_M by ignoring its input); only the
    generators move. Transfer phase only: the warm-up has no segmenter. Like TranslationTrainer,
    steps run under the device's mixed precision and return their losses as tensors."""

    def __init__(self, cfg: "RunConfig", device: torch.device):
        from models.translators.semantic import MaskDiscriminator

        self.weight, self.device = cfg.w_semantic, device
        self.discriminator = MaskDiscriminator(cfg.translator_width, cfg.spectral_norm).to(device)
        self.optimizer = gan_adam(self.discriminator.parameters(), device, cfg, discriminator=True)
        self.discriminator_scaler, self.generator_scaler = grad_scaler_for(device), grad_scaler_for(device)

    @staticmethod
    def _foreground(segmenter: nn.Module, images: Tensor) -> Tensor:
        return torch.softmax(segmenter(images).float(), dim=1)[:, 1:2]

    def step(self, translator: Translator, segmenter: nn.Module, generator_optimizer: torch.optim.Optimizer,
             b: Tensor, source_masks: Tensor) -> dict[str, Tensor]:
        from models.translators.losses import lsgan_discriminator_loss, lsgan_generator_loss

        was_training = segmenter.training
        segmenter.eval()  # frozen: no batch-norm statistics from translated target images either

        def discriminator_loss() -> dict[str, Tensor]:
            with torch.no_grad():
                predicted = self._foreground(segmenter, translator.translate_ba(b))
            real = source_masks[:, None].to(predicted.dtype)
            return {"total": self.weight * lsgan_discriminator_loss(self.discriminator(real),
                                                                    self.discriminator(predicted))}

        def generator_loss() -> dict[str, Tensor]:
            return {"total": self.weight * lsgan_generator_loss(
                self.discriminator(self._foreground(segmenter, translator.translate_ba(b))))}

        d_loss = adversarial_step(self.device, [self.discriminator], [segmenter, *translator.generator_modules()],
                                  self.optimizer, self.discriminator_scaler, discriminator_loss)["total"]
        # The segmenter stays frozen: only the generators move.
        g_loss = adversarial_step(self.device, translator.generator_modules(), [self.discriminator],
                                  generator_optimizer, self.generator_scaler, generator_loss)["total"]
        set_trainable([segmenter], True)
        segmenter.train(was_training)
        return {"SEM_d": d_loss, "SEM_g": g_loss}

    def state_dict(self) -> dict:
        return {"discriminator": self.discriminator.state_dict(), "optimizer": self.optimizer.state_dict(),
                "discriminator_scaler": self.discriminator_scaler.state_dict(),
                "generator_scaler": self.generator_scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.discriminator.load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["optimizer"])
        load_scaler_state(self.discriminator_scaler, state.get("discriminator_scaler"))
        load_scaler_state(self.generator_scaler, state.get("generator_scaler"))


def paired_batches(n_a: int, n_b: int, batch_size: int,
                   rng: np.random.Generator) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One epoch of unpaired (A, B) index batches: a pass over the larger set, the smaller one cycled."""
    steps = math.ceil(max(n_a, n_b) / batch_size)
    order_a = np.concatenate([rng.permutation(n_a) for _ in range(math.ceil(steps * batch_size / n_a))])
    order_b = np.concatenate([rng.permutation(n_b) for _ in range(math.ceil(steps * batch_size / n_b))])
    for step in range(steps):
        window = slice(step * batch_size, (step + 1) * batch_size)
        yield order_a[window], order_b[window]


def device_batches(batches: Iterable[tuple[np.ndarray, ...]], device: torch.device) -> list[tuple[Tensor, ...]]:
    """An epoch's index batches (drawn as before, all at once) moved to the device in one copy."""
    drawn = list(batches)
    if not drawn:
        return []
    stacked = [torch.from_numpy(np.stack(column)).to(device) for column in zip(*drawn)]
    return list(zip(*(column.unbind(0) for column in stacked)))


def format_losses(losses: dict[str, float]) -> str:
    return " ".join(f"{name} {value:.3f}" for name, value in losses.items() if not name.endswith("_total"))


# ---------------------------------------------------------------------------------------------
# The balance of the adversarial game, watched every epoch (warm-up and transfer).
#
# Both numbers are per discriminator and per unit of w_adv. LSGAN: at chance (every score 0.5)
# the discriminator loss is 0.25 and G_adv 0.25; discriminators that win outright (real 1,
# translated 0) give 0 and 1. Discriminators "saturate" when they stay near that corner: the
# generators then get no useful adversarial signal and only the cycle and reconstruction terms
# shape the translation, which an inversion satisfies as well as the right answer.
SATURATION_D_LOSS = 0.01
SATURATION_G_ADV = 0.9
SATURATION_EPOCHS = 3  # consecutive epochs before the warning


def adversarial_balance(losses: dict[str, float], w_adv: float) -> dict[str, float | bool]:
    """{"balance_d", "balance_g", "saturated"} from one epoch's mean losses ({} without an adversarial term)."""
    if w_adv <= 0 or not {"D_d_a", "D_d_b", "G_adv"} <= set(losses):
        return {}
    d_loss = (losses["D_d_a"] + losses["D_d_b"]) / (N_ADVERSARIAL_TERMS * w_adv)
    g_adv = losses["G_adv"] / (N_ADVERSARIAL_TERMS * w_adv)
    return {"balance_d": d_loss, "balance_g": g_adv,
            "saturated": bool(d_loss < SATURATION_D_LOSS and g_adv > SATURATION_G_ADV)}


def format_balance(balance: dict) -> str:
    if not balance:
        return "D/G balance n/a (w_adv 0)"
    flag = " SATURATED" if balance["saturated"] else ""
    return (f"D/G balance: D {balance['balance_d']:.3f} G_adv {balance['balance_g']:.3f} "
            f"(chance 0.25/0.25, lost 0/1){flag}")


def saturation_report(history: Sequence[dict], phase: str) -> dict | None:
    """The longest stretch of consecutive saturated epochs in `history`, if it lasts at least
    SATURATION_EPOCHS epochs; None for a healthy run."""
    longest: list[dict] = []
    stretch: list[dict] = []
    for record in history:
        stretch = stretch + [record] if record.get("saturated") else []
        if len(stretch) > len(longest):
            longest = stretch
    if len(longest) < SATURATION_EPOCHS:
        return None
    return {"phase": phase, "first_epoch": int(longest[0]["epoch"]), "last_epoch": int(longest[-1]["epoch"]),
            "epochs": len(longest), "d_loss": float(np.mean([r["balance_d"] for r in longest])),
            "g_adv": float(np.mean([r["balance_g"] for r in longest]))}


def saturation_message(report: dict) -> str:
    return (f"discriminators saturated during the {report['phase']} (epochs {report['first_epoch']}-"
            f"{report['last_epoch']}): D loss {report['d_loss']:.4f} < {SATURATION_D_LOSS} with G_adv "
            f"{report['g_adv']:.3f} of its maximum 1 (per discriminator and unit w_adv); the generators got no "
            f"adversarial signal, so nothing but the cycle term shaped the translation. Look at the translation "
            f"samples; keep spectral_norm on, or try r1_gamma / instance_noise / a lower d_lr_ratio")


def watch_saturation(history: Sequence[dict], phase: str) -> None:
    """Warn in the log the epoch a stretch of saturated epochs reaches SATURATION_EPOCHS."""
    recent = history[-SATURATION_EPOCHS:]
    if len(recent) == SATURATION_EPOCHS and all(r.get("saturated") for r in recent) and (
            len(history) == SATURATION_EPOCHS or not history[-SATURATION_EPOCHS - 1].get("saturated")):
        log.warning(saturation_message(saturation_report(recent, phase)))


# ---------------------------------------------------------------------------------------------
# The warm-up: the translation trained alone, once per (translator config, data, repetition).


def translator_key(cfg: "RunConfig", source_key: str, target_key: str) -> str:
    """The cache key of a warmed translator: its config (protocol.config.warmup_identity; task and
    label fraction are absent, so every task and fraction of a repetition reuses one warm-up,
    paper §V-C) and the cache keys of the source and target data it trains on."""
    identity = {"version": WARMUP_VERSION, **warmup_identity(cfg), "source": source_key, "target_data": target_key}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return digest[:16]


def warmup_translator(cfg: "RunConfig", source: "CachedDataset", target: "CachedDataset", out_dir: str | Path,
                      device: torch.device | None = None, callbacks: Sequence[EpochCallback] = ()) -> Path:
    """Train the translator alone for `cfg.warmup_epochs` on the source and target training
    splits (target labels unused), or return the cached result of an identical earlier warm-up.
    An interrupted warm-up resumes from its last.pt (in `out_dir`/warmup-KEY, removed once the
    translator is saved); `callbacks` are called after every epoch, as a training run's.

    Returns the path of a translator checkpoint; samples of its translations lie beside it.
    """
    from engine.transfer_data import transfer_splits

    key = translator_key(cfg, source.key, target.key)
    out_dir = Path(out_dir)
    path = out_dir / translator_checkpoint_name(cfg.translator, key)
    if path.is_file():
        log.info("warm-up %s: reusing %s", key, path)
        return path
    source_split, target_split = transfer_splits(cfg, len(source.ids), len(target.ids))
    images_a, images_b = source.images[source_split.train], target.images[target_split.train]
    device = device or resolve_device(cfg.device)
    run_dir = out_dir / f"warmup-{key}"
    with torch_threads(cfg.num_threads):
        run = WarmupRun(cfg, images_a, images_b, device, run_dir)
        translator = run.run(callbacks)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_translator(path, translator, cfg, key, run.history)
    save_translation_samples(translator, images_a, images_b, out_dir / translator_samples_name(cfg.translator, key))
    shutil.rmtree(run_dir, ignore_errors=True)  # its result is the translator checkpoint
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


# ---------------------------------------------------------------------------------------------
# Samples for the eye: input | translated | translated back, one row per image.


def _to_gray8(image: np.ndarray) -> np.ndarray:
    # Standardised intensities: +-3 standard deviations covers the anatomy without clipping bone.
    return (np.clip((image + 3.0) / 6.0, 0.0, 1.0) * 255).astype(np.uint8)


@torch.no_grad()
def save_translation_samples(translator: Translator, images_a: np.ndarray, images_b: np.ndarray, out_dir: Path,
                             n: int = 4) -> list[Path]:
    """Write a_to_b.png (a | G_AB(a) | G_BA(G_AB(a))) and b_to_a.png (b | G_BA(b) | G_AB(G_BA(b)))."""
    from PIL import Image

    device = next(translator.parameters()).device
    was_training = translator.training
    translator.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, images, forward, back in [("a_to_b", images_a, translator.translate_ab, translator.translate_ba),
                                        ("b_to_a", images_b, translator.translate_ba, translator.translate_ab)]:
        picked = np.linspace(0, len(images) - 1, min(n, len(images))).round().astype(int)
        x = as_batch(images[picked], device)
        there = forward(x)
        rows = [np.concatenate([_to_gray8(t[i, 0].cpu().numpy()) for t in (x, there, back(there))], axis=1)
                for i in range(len(picked))]
        path = out_dir / f"{name}.png"
        Image.fromarray(np.concatenate(rows, axis=0)).save(path)
        written.append(path)
    translator.train(was_training)
    return written
