"""Training objectives the one trainer (:mod:`ldmscale.train`) plugs in.

An objective turns one mini-batch of cached tensors into a scalar loss. It draws
every random number it needs from the ``torch.Generator`` it is handed, in a
fixed order, so that the trainer can make step ``s`` reproducible from
``(seed, s, process index)`` alone (exact resume). Random numbers are drawn on
the CPU and then moved to the batch's device, so a step draws the same numbers
on every device.

The text-to-image objective is SD's denoising objective:

- latent ``z = (mean + std * n) * scaling_factor`` (a sample of the VAE posterior,
  from the latent cache's moments, scaled to unit variance);
- timestep ``t ~ U{0, ..., 999}``, noise ``eps ~ N(0, I)``,
  ``x_t = sqrt(abar_t) z + sqrt(1 - abar_t) eps`` (diffusers ``add_noise``; SD's
  ``scaled_linear`` betas 0.00085..0.012 over 1000 steps);
- caption dropout: with probability ``caption_dropout`` a row's text embedding is
  replaced by the embedding of the empty caption (what classifier-free guidance
  uses as the unconditional branch);
- target ``eps`` (``prediction_type="epsilon"``) or ``v = sqrt(abar_t) eps -
  sqrt(1 - abar_t) z`` (``"v_prediction"``, diffusers ``get_velocity``); loss is the
  mean squared error in float32;
- optional Min-SNR-gamma weighting (Hang et al. 2023, ``min_snr_gamma > 0``): each row's
  squared error is weighted by ``min(SNR_t, gamma) / SNR_t`` (epsilon target) or
  ``min(SNR_t, gamma) / (SNR_t + 1)`` (v target), ``SNR_t = abar_t / (1 - abar_t)``; this
  is the x0-error weighting clipped at ``gamma``, so low-noise steps stop dominating.

To add an objective (super-resolution, DreamBooth, distillation): write a class
with ``name``, ``required_keys`` (the cached tensors it reads per row) and
``loss(model, batch, generator)``, and register its builder in ``OBJECTIVES``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from ldmscale.config import ConfigError

# Stable Diffusion's training noise schedule.
NUM_TRAIN_TIMESTEPS = 1000
BETA_START = 0.00085
BETA_END = 0.012
BETA_SCHEDULE = "scaled_linear"
PREDICTION_TYPES = ("epsilon", "v_prediction")


def make_noise_scheduler(prediction_type: str = "epsilon"):
    """SD's ``DDPMScheduler``: scaled-linear betas 0.00085..0.012, 1000 steps."""
    from diffusers import DDPMScheduler

    if prediction_type not in PREDICTION_TYPES:
        raise ConfigError(
            f"prediction_type must be one of {list(PREDICTION_TYPES)}, got {prediction_type!r}"
        )
    return DDPMScheduler(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        beta_start=BETA_START,
        beta_end=BETA_END,
        beta_schedule=BETA_SCHEDULE,
        clip_sample=False,
        prediction_type=prediction_type,
        steps_offset=1,
    )


class Objective(Protocol):
    """What the trainer needs from an objective."""

    name: str
    required_keys: tuple[str, ...]

    def loss(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> torch.Tensor:
        """Scalar float32 loss for ``batch``; all randomness from ``generator`` (a CPU generator)."""
        ...


@dataclass
class TextToImage:
    """SD's text-to-image denoising objective (see the module docstring).

    null_embedding: ``[1, T, D]``, the text encoder's output for ``""``.
    scaling_factor: multiplies VAE latents so they have roughly unit variance.
    """

    scheduler: Any
    null_embedding: torch.Tensor
    scaling_factor: float
    prediction_type: str = "epsilon"
    caption_dropout: float = 0.1
    min_snr_gamma: float = 0.0
    name: str = "t2i"
    required_keys: tuple[str, ...] = ("latent_mean", "latent_std", "embeddings")

    def loss(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> torch.Tensor:
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


def _build_t2i(
    *, null_embedding, scaling_factor, prediction_type, caption_dropout, min_snr_gamma=0.0, **_
):
    return TextToImage(
        scheduler=make_noise_scheduler(prediction_type),
        null_embedding=null_embedding,
        scaling_factor=float(scaling_factor),
        prediction_type=prediction_type,
        caption_dropout=float(caption_dropout),
        min_snr_gamma=float(min_snr_gamma),
    )


OBJECTIVES: dict[str, Callable[..., Objective]] = {"t2i": _build_t2i}


def build_objective(name: str, **context: Any) -> Objective:
    """Build the objective registered as ``name`` from the trainer's context keywords."""
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective {name!r}; available: {sorted(OBJECTIVES)}")
    return OBJECTIVES[name](**context)
