"""Text-to-image: Stable Diffusion's denoising objective (the default, ``objective = "t2i"``).

- latent ``z = (mean + std * n) * scaling_factor`` (a sample of the VAE posterior, from the
  latent cache's moments, scaled to unit variance);
- timestep ``t ~ U{0, ..., 999}``, noise ``eps ~ N(0, I)``,
  ``x_t = sqrt(abar_t) z + sqrt(1 - abar_t) eps`` (diffusers ``add_noise``; SD's
  ``scaled_linear`` betas 0.00085..0.012 over 1000 steps);
- caption dropout: with probability ``caption_dropout`` a row's text embedding is replaced by
  the embedding of the empty caption (what classifier-free guidance uses as the unconditional
  branch);
- target ``eps`` (``prediction_type="epsilon"``) or ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) z``
  (``"v_prediction"``, diffusers ``get_velocity``); loss is the mean squared error in float32;
- optional Min-SNR-gamma weighting (Hang et al. 2023, ``min_snr_gamma > 0``): each row's
  squared error is weighted by ``min(SNR_t, gamma) / SNR_t`` (epsilon target) or
  ``min(SNR_t, gamma) / (SNR_t + 1)`` (v target), ``SNR_t = abar_t / (1 - abar_t)``; this is the
  x0-error weighting clipped at ``gamma``, so low-noise steps stop dominating.

Its settings are ``TrainConfig``'s top-level keys ``prediction_type``, ``caption_dropout`` and
``min_snr_gamma``; it takes no ``objective_options``, no teacher, no UNet overrides, keeps no
state, and exports SD's ``DDPMScheduler`` with its ``prediction_type``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ldmscale.config import ConfigError
from ldmscale.objectives.base import (
    NUM_TRAIN_TIMESTEPS,
    Objective,
    SetupContext,
    make_noise_scheduler,
)

if TYPE_CHECKING:
    from ldmscale.train.config import TrainConfig


@dataclass
class TextToImage(Objective):
    """SD's text-to-image denoising objective (see the module docstring).

    null_embedding: ``[1, T, D]``, the text encoder's output for ``""``.
    scaling_factor: multiplies VAE latents so they have roughly unit variance.
    Both come from the training data in :meth:`setup` when not given.
    """

    scheduler: Any
    null_embedding: torch.Tensor | None = None
    scaling_factor: float | None = None
    prediction_type: str = "epsilon"
    caption_dropout: float = 0.1
    min_snr_gamma: float = 0.0
    name: str = "t2i"
    required_keys: tuple[str, ...] = ("latent_mean", "latent_std", "embeddings")

    def setup(self, ctx: SetupContext) -> None:
        self.null_embedding = ctx.cond.null_embedding
        self.scaling_factor = float(ctx.cond.scaling_factor)

    def loss(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> torch.Tensor:
        if self.null_embedding is None or self.scaling_factor is None:
            raise RuntimeError(
                "TextToImage needs null_embedding and scaling_factor: pass them or call setup()"
            )
        mean = batch["latent_mean"]
        std = batch["latent_std"]
        emb = batch["embeddings"]
        dev = mean.device
        b = mean.shape[0]
        # Fixed draw order: posterior noise, diffusion noise, timesteps, dropout mask.
        post = torch.randn(mean.shape, generator=generator).to(dev)
        noise = torch.randn(mean.shape, generator=generator).to(dev)
        t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (b,), generator=generator).to(dev)
        drop = (torch.rand(b, generator=generator) < self.caption_dropout).to(dev)

        z = (mean + std * post) * self.scaling_factor
        null = self.null_embedding.to(device=dev, dtype=emb.dtype).expand_as(emb)
        cond = torch.where(drop[:, None, None], null, emb)
        noisy = self.scheduler.add_noise(z, noise, t)
        if self.prediction_type == "epsilon":
            target = noise
        else:
            target = self.scheduler.get_velocity(z, noise, t)
        pred = model(noisy, t, encoder_hidden_states=cond).sample
        if not self.min_snr_gamma:
            return F.mse_loss(pred.float(), target.float())
        err = (pred.float() - target.float()).pow(2).mean(dim=tuple(range(1, pred.ndim)))
        return (
            min_snr_weights(self.scheduler, t, self.min_snr_gamma, self.prediction_type) * err
        ).mean()


def min_snr_weights(
    scheduler: Any, t: torch.Tensor, gamma: float, prediction_type: str
) -> torch.Tensor:
    """Min-SNR-gamma loss weights per timestep (float32, on ``t``'s device)."""
    abar = scheduler.alphas_cumprod.to(t.device)[t].float()
    snr = abar / (1 - abar)
    clipped = torch.clamp(snr, max=gamma)
    return clipped / (snr + 1) if prediction_type == "v_prediction" else clipped / snr


def build(cfg: TrainConfig) -> TextToImage:
    """The t2i objective of ``cfg`` (its top-level ``prediction_type``, ``caption_dropout``,
    ``min_snr_gamma``); ``objective_options`` must be empty."""
    if cfg.objective_options:
        raise ConfigError(
            f"TrainConfig.objective_options has {sorted(cfg.objective_options)}, but objective "
            "'t2i' takes no options: its settings are the top-level keys prediction_type, "
            "caption_dropout and min_snr_gamma. Remove objective_options"
        )
    return TextToImage(
        scheduler=make_noise_scheduler(cfg.prediction_type),
        prediction_type=cfg.prediction_type,
        caption_dropout=float(cfg.caption_dropout),
        min_snr_gamma=float(cfg.min_snr_gamma),
    )
