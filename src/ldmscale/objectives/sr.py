"""Super-resolution: fine-tune a text-to-image model to denoise latents given a degraded
low-resolution (LR) image (``objective = "sr"``), as diffusers' Stable Diffusion ×4 upscaler.

Per row, with the step generator, in this order: posterior noise, diffusion noise ``eps``,
timestep ``t ~ U{0..999}``, a degradation seed, LR noise, LR noise level
``l ~ U{0..max_noise_level-1}``, the caption-dropout draw. Then:

- LR = ``degrade(hr_uint8, preset, Generator(seed))`` (:mod:`ldmscale.data.degrade`), in
  [-1, 1]; it must have the latent's spatial size (×4 with ldmscale's f = 4 autoencoder);
- noise augmentation: ``lr_l = sqrt(abar_l) LR + sqrt(1 - abar_l) n`` on the *low-res* schedule
  (1000 steps, β from 1e-4 to 0.02 sqrt-linear, diffusers ``scaled_linear``; the schedule of
  Stability's ``ImageConcatWithNoiseAugmentation``), so the model learns to ignore LR noise;
- the UNet sees ``cat[x_t, lr_l]`` (3 extra ``conv_in`` channels) and ``class_labels = l``
  (a 1000-entry class embedding added to the time embedding); ``x_t`` and the target
  (``eps`` or ``v``) as in :mod:`ldmscale.objectives.t2i`; MSE in float32;
- text: off by default (every row gets the empty caption's embedding: on ``shapes`` the caption
  names every attribute and would give the answer away); ``text = true`` uses the captions
  with t2i's caption dropout.

With ``TrainConfig.init_from`` the t2i parent is grown into the SR UNet function-preservingly
(:mod:`ldmscale.surgery`: zero new ``conv_in`` channels, zero class embedding).
Options (``objective_options``): ``degradation`` (a key of
:data:`ldmscale.data.degrade.PRESETS`), ``max_noise_level`` (≤ 1000), ``text``.
Batches need ``hr_uint8`` ``[B, H, W, 3]`` rows besides the latent cache's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ldmscale.config import Config, ConfigError
from ldmscale.data.degrade import PRESETS, DegradeConfig, degrade
from ldmscale.objectives.base import (
    NUM_TRAIN_TIMESTEPS,
    ExportHints,
    Objective,
    SetupContext,
    make_noise_scheduler,
    read_options,
)

if TYPE_CHECKING:
    from ldmscale.train.config import TrainConfig

NUM_NOISE_LEVELS = 1000
"""Size of the LR noise-level class embedding (diffusers' ×4 upscaler: ``num_class_embeds``)."""
LR_CHANNELS = 3


@dataclass
class SROptions(Config):
    """``objective_options`` of ``objective = "sr"`` (see the module docstring)."""

    degradation: str = "shapes32"
    max_noise_level: int = 350
    text: bool = False

    def __post_init__(self) -> None:
        if self.degradation not in PRESETS:
            raise ConfigError(
                f"degradation must be one of {sorted(PRESETS)}, got {self.degradation!r}"
            )
        if not 1 <= self.max_noise_level <= NUM_NOISE_LEVELS:
            raise ConfigError(
                f"max_noise_level must be in 1..{NUM_NOISE_LEVELS}, got {self.max_noise_level}"
            )


def make_low_res_scheduler():
    """The LR noise-augmentation schedule: DDPM, 1000 steps, β 1e-4..0.02 sqrt-linear."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=NUM_NOISE_LEVELS,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="scaled_linear",
    )


@dataclass
class SuperResolution(Objective):
    """The SR objective (see the module docstring). ``null_embedding`` ``[1, T, D]`` and
    ``scaling_factor`` come from the training data in :meth:`setup` when not given."""

    scheduler: Any
    degradation: DegradeConfig
    low_res_scheduler: Any = None
    max_noise_level: int = 350
    text: bool = False
    caption_dropout: float = 0.1
    prediction_type: str = "epsilon"
    null_embedding: torch.Tensor | None = None
    scaling_factor: float | None = None
    name: str = "sr"
    required_keys: tuple[str, ...] = ("latent_mean", "latent_std", "embeddings", "hr_uint8")

    def __post_init__(self) -> None:
        if self.low_res_scheduler is None:
            self.low_res_scheduler = make_low_res_scheduler()

    def unet_overrides(self) -> dict[str, int]:
        return {"extra_in_channels": LR_CHANNELS, "num_class_embeds": NUM_NOISE_LEVELS}

    def setup(self, ctx: SetupContext) -> None:
        self.null_embedding = ctx.cond.null_embedding
        self.scaling_factor = float(ctx.cond.scaling_factor)

    def low_res(self, hr: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """Degraded LR of uint8 ``hr`` [B, H, W, 3], row i seeded by ``seeds[i]``: float32
        [B, 3, H/s, W/s] in [-1, 1] (on the CPU)."""
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        lr = degrade(hr.cpu(), self.degradation, gens)
        return lr.permute(0, 3, 1, 2).float() / 127.5 - 1.0

    def loss(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> torch.Tensor:
        if self.null_embedding is None or self.scaling_factor is None:
            raise RuntimeError(
                "SuperResolution needs null_embedding and scaling_factor: pass them or call setup()"
            )
        mean, std, emb = batch["latent_mean"], batch["latent_std"], batch["embeddings"]
        dev, b = mean.device, mean.shape[0]
        size = tuple(mean.shape[-2:])
        # Fixed draw order: posterior, eps, t, degradation seeds, LR noise, LR level, dropout.
        post = torch.randn(mean.shape, generator=generator).to(dev)
        noise = torch.randn(mean.shape, generator=generator).to(dev)
        t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (b,), generator=generator).to(dev)
        seeds = torch.randint(0, 2**62, (b,), generator=generator)
        lr_noise = torch.randn((b, LR_CHANNELS, *size), generator=generator)
        level = torch.randint(0, self.max_noise_level, (b,), generator=generator)
        drop = (torch.rand(b, generator=generator) < self.caption_dropout).to(dev)

        lr = self.low_res(batch["hr_uint8"], seeds)
        if tuple(lr.shape[-2:]) != size:
            raise ValueError(
                f"SR: the degraded LR is {tuple(lr.shape[-2:])} px but the latents are {size}; "
                f"the HR images must be {self.degradation.scale} x the latent size "
                f"({size[0] * self.degradation.scale} px) for a x{self.degradation.scale} model"
            )
        lr = self.low_res_scheduler.add_noise(lr, lr_noise, level).to(dev, mean.dtype)
        null = self.null_embedding.to(device=dev, dtype=emb.dtype).expand_as(emb)
        ctx = torch.where(drop[:, None, None], null, emb) if self.text else null
        z = (mean + std * post) * self.scaling_factor
        noisy = self.scheduler.add_noise(z, noise, t)
        target = (
            noise if self.prediction_type == "epsilon" else self.scheduler.get_velocity(z, noise, t)
        )
        pred = model(
            torch.cat([noisy, lr], dim=1), t, encoder_hidden_states=ctx, class_labels=level.to(dev)
        ).sample
        return F.mse_loss(pred.float(), target.float())

    def export_hints(self) -> ExportHints:
        low_res = self.low_res_scheduler.config
        sr = {
            "scale": self.degradation.scale,
            "max_noise_level": self.max_noise_level,
            "low_res_schedule": {
                k: low_res[k]
                for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")
            },
            "degradation": self.degradation.to_dict(),
        }
        return ExportHints(scheduler=make_noise_scheduler(self.prediction_type), task="sr", sr=sr)


def build(cfg: TrainConfig) -> SuperResolution:
    """The SR objective of ``cfg``: ``objective_options`` as :class:`SROptions`; the top-level
    ``prediction_type`` and ``caption_dropout`` (used only with ``text = true``)."""
    opts = read_options(SROptions, cfg)
    return SuperResolution(
        scheduler=make_noise_scheduler(cfg.prediction_type),
        degradation=PRESETS[opts.degradation](),
        max_noise_level=opts.max_noise_level,
        text=opts.text,
        caption_dropout=float(cfg.caption_dropout),
        prediction_type=cfg.prediction_type,
    )
