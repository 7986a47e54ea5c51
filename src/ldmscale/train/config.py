"""``TrainConfig`` (everything that determines a training run) and the trainer's errors."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ldmscale.config import Config, ConfigError, omit_if_default
from ldmscale.family import UNetSpec
from ldmscale.objectives import PREDICTION_TYPES

LR_SCHEDULES = ("constant", "cosine")
MIXED_PRECISIONS = ("no", "bf16", "fp16")


class TrainError(ValueError):
    """A training run that cannot go on; the message says how to fix it."""


class TrainingDivergedError(TrainError):
    """The loss (or gradient norm) became NaN or infinite."""


class CheckpointError(TrainError):
    """A checkpoint is missing, incomplete or corrupt."""


class RunMismatchError(TrainError):
    """The run folder belongs to a run with a different config."""


@dataclass
class TrainConfig(Config):
    """Everything that determines a training run (and nothing that does not).

    Model: ``c`` (base width), ``layers_per_block``, ``heads`` (or a fixed ``head_dim``, see
    :class:`ldmscale.family.UNetSpec`); the context width/length and
    the latent shape come from the caches.
    Conditioning: either ``latents`` + ``embeddings`` (cache files), or ``data`` (a dataset
    folder) + ``vae`` + ``text_encoder`` (``TextEncoderSpec`` fields), from which the caches
    are built in ``cache_dir`` (default ``<run_dir>/cache``). ``vae`` (a diffusers
    ``AutoencoderKL`` folder) is always needed: it is copied into the exported model.
    Optimisation: ``lr`` (peak), ``warmup_steps`` (linear from 0), then ``lr_schedule``
    ``"constant"`` or ``"cosine"`` (to 0 at ``steps``); AdamW ``weight_decay``,
    ``adam_beta1/2``, ``adam_eps``; ``grad_clip`` (max global L2 norm, 0 = off);
    ``ema_decay`` (with warm-up ``min(ema_decay, (1+n)/(10+n))`` after n updates).
    ``batch_size`` is global (split over processes). ``caption_dropout`` in [0, 1).
    ``min_snr_gamma``: Min-SNR-gamma loss weighting (Hang et al. 2023; 0 = off, 5 typical).
    ``fused_adamw``: AdamW's fused kernel instead of its foreach loop (same update up to float
    rounding; see BENCHMARKS.md for what it buys).
    Bookkeeping: ``checkpoint_every``, ``keep_last`` checkpoints, ``log_every`` steps.
    Objective: ``objective`` (a key of ``ldmscale.objectives.OBJECTIVES``) and
    ``objective_options`` (its own options, a nested table checked by its builder);
    ``caption_dropout``, ``prediction_type`` and ``min_snr_gamma`` are the text-to-image
    objective's settings. ``init_from``: a trained model folder whose (EMA) ``unet/`` weights
    the run starts from, grown function-preservingly into the objective's UNet overrides
    (:mod:`ldmscale.surgery`). ``teacher``: a trained model folder handed to the objective.
    ``init_from``, ``teacher`` and ``objective_options`` are left out of ``to_dict`` while
    unset, so configs and run folders written before they existed keep their identity.
    """

    run_dir: str = "runs/t2i"
    c: int = 64
    layers_per_block: int = 2
    heads: int = 8
    head_dim: int = 0
    objective: str = "t2i"
    objective_options: dict[str, Any] = omit_if_default(default_factory=dict)
    init_from: str | None = omit_if_default(None)
    teacher: str | None = omit_if_default(None)
    latents: str | None = None
    embeddings: str | None = None
    data: str | None = None
    resolution: int = 32
    vae: str | None = None
    text_encoder: dict[str, Any] | None = None
    cache_dir: str | None = None
    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-4
    warmup_steps: int = 100
    lr_schedule: str = "constant"
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    ema_decay: float = 0.9999
    grad_clip: float = 1.0
    mixed_precision: str = "no"
    caption_dropout: float = 0.1
    prediction_type: str = "epsilon"
    min_snr_gamma: float = 0.0
    seed: int = 0
    checkpoint_every: int = 500
    keep_last: int = 2
    log_every: int = 10
    eval_steps: tuple[int, ...] = ()
    fused_adamw: bool = False

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"TrainConfig.{name}={getattr(self, name)!r}: {why}")

        for name in ("steps", "batch_size", "checkpoint_every", "keep_last", "log_every"):
            if getattr(self, name) < 1:
                raise bad(name, "must be >= 1")
        if self.warmup_steps < 0:
            raise bad("warmup_steps", "must be >= 0")
        if self.lr <= 0 or not math.isfinite(self.lr):
            raise bad("lr", "must be a positive finite number")
        if self.lr_schedule not in LR_SCHEDULES:
            raise bad("lr_schedule", f"must be one of {list(LR_SCHEDULES)}")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise bad("mixed_precision", f"must be one of {list(MIXED_PRECISIONS)}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise bad("prediction_type", f"must be one of {list(PREDICTION_TYPES)}")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise bad("caption_dropout", "must be in [0, 1)")
        if not 0.0 <= self.ema_decay < 1.0:
            raise bad("ema_decay", "must be in [0, 1)")
        if self.grad_clip < 0:
            raise bad("grad_clip", "must be >= 0 (0 turns clipping off)")
        if self.min_snr_gamma < 0:
            raise bad("min_snr_gamma", "must be >= 0 (0 turns min-SNR weighting off)")
        if not isinstance(self.objective_options, dict) or not all(
            isinstance(k, str) for k in self.objective_options
        ):
            raise bad("objective_options", "must be a table of option name -> value")
        for name in ("init_from", "teacher"):
            if getattr(self, name) is not None and not str(getattr(self, name)).strip():
                raise bad(name, "must be a model folder path, or unset")
        if self.text_encoder is not None:
            from ldmscale.text import TextEncoderSpec

            try:  # checked now, not at export after hours of training
                TextEncoderSpec.from_dict(self.text_encoder)
            except (ConfigError, TypeError) as e:
                raise bad("text_encoder", f"is not a TextEncoderSpec table ({e})") from None

    def unet_spec(self, context_dim: int, context_len: int, channels: int, size: int) -> UNetSpec:
        """The family member this config trains, for the data's context and latent shape
        (without an objective's overrides)."""
        return UNetSpec(
            c=self.c,
            context_dim=context_dim,
            context_len=context_len,
            latent_channels=channels,
            latent_size=size,
            layers_per_block=self.layers_per_block,
            heads=self.heads,
            head_dim=self.head_dim,
        )


def log_spaced_steps(total: int, n: int, first: int) -> tuple[int, ...]:
    """``n`` distinct training steps, sorted, roughly geometric from ``first`` to ``total``.

    The last step is always ``total``; rounding collisions are pushed apart by one step, so
    the result has exactly ``n`` entries (``n <= total - first + 1`` is required). Use it for
    ``TrainConfig.eval_steps`` (the paper's Fig. 3 samples checkpoints on a log axis).
    """
    if total < 1 or first < 1 or first > total:
        raise ValueError(
            f"log_spaced_steps: need 1 <= first <= total, got first={first}, total={total}"
        )
    if n < 1 or n > total - first + 1:
        raise ValueError(
            f"log_spaced_steps: n={n} must be in [1, {total - first + 1}] "
            f"(the number of steps from {first} to {total})"
        )
    if n == 1:
        return (total,)
    ratio = total / first
    raw = [round(first * ratio ** (i / (n - 1))) for i in range(n)]
    out = []
    for v in raw:  # strictly increasing ...
        out.append(max(v, out[-1] + 1) if out else v)
    for i in range(n - 1, -1, -1):  # ... and never past total (room for the later ones)
        out[i] = min(out[i], total - (n - 1 - i))
    return tuple(out)


def check_eval_steps(cfg: TrainConfig) -> tuple[int, ...]:
    """``cfg.eval_steps`` validated (each in ``[1, cfg.steps]``, no repeats), sorted."""
    steps = tuple(int(s) for s in cfg.eval_steps)
    bad = [s for s in steps if not 1 <= s <= cfg.steps]
    if bad:
        raise ConfigError(
            f"TrainConfig.eval_steps: steps {bad} are outside [1, steps={cfg.steps}]; "
            "e.g. use ldmscale.train.log_spaced_steps(steps, n, first)"
        )
    if len(set(steps)) != len(steps):
        raise ConfigError(f"TrainConfig.eval_steps={list(steps)} has repeated steps")
    return tuple(sorted(steps))
