"""DreamBooth: fine-tune a text-to-image model on a few subject images named by a rare
identifier, with class-prior preservation (Ruiz et al. 2023; diffusers' ``train_dreambooth``).

``objective = "dreambooth"``. The trainer's rows are the *instance* rows (the subject images
with their identifier captions, e.g. "a large purple sks circle at the top left"); the *prior*
rows (class images the parent model drew for the class prompt before training) are a second
dataset folder, ``objective_options.prior``, cached with the run's VAE and text encoder in
:meth:`setup`. Each step:

    loss = t2i_loss(instance batch) + prior_weight * t2i_loss(prior batch)

both terms :class:`~ldmscale.objectives.t2i.TextToImage`'s loss (its target, caption dropout
and Min-SNR weighting, from the top-level ``TrainConfig`` keys). Random draws, in order, from
the step generator: the ``prior_batch`` prior row indices (uniform, with replacement), the
instance term's draws, the prior term's draws. ``prior = ""`` is the ablation without prior
preservation (instance term only). Start from the parent with ``TrainConfig.init_from``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ldmscale.config import Config, ConfigError
from ldmscale.objectives.base import Objective, SetupContext, read_options
from ldmscale.objectives.t2i import TextToImage
from ldmscale.objectives.t2i import build as build_t2i

if TYPE_CHECKING:
    from ldmscale.train.config import TrainConfig


@dataclass
class DreamBoothOptions(Config):
    """``objective_options`` of ``objective = "dreambooth"``.

    prior: the class-image dataset folder ("" = no prior preservation). prior_weight: the
    prior term's weight lambda. prior_batch: prior rows per step.
    """

    prior: str = ""
    prior_weight: float = 1.0
    prior_batch: int = 4

    def __post_init__(self) -> None:
        if self.prior_weight < 0:
            raise ConfigError(f"prior_weight must be >= 0, got {self.prior_weight}")
        if self.prior_batch < 1:
            raise ConfigError(f"prior_batch must be >= 1, got {self.prior_batch}")


@dataclass
class DreamBooth(Objective):
    """The DreamBooth objective (see the module docstring)."""

    t2i: TextToImage
    options: DreamBoothOptions
    prior_rows: dict[str, torch.Tensor] | None = None
    name: str = "dreambooth"
    required_keys: tuple[str, ...] = ("latent_mean", "latent_std", "embeddings")

    @property
    def prediction_type(self) -> str:  # type: ignore[override]
        return self.t2i.prediction_type

    def setup(self, ctx: SetupContext) -> None:
        from ldmscale.cache import load_conditioning, resolve_cache_paths

        self.t2i.setup(ctx)
        if not self.options.prior:
            return
        cfg = ctx.cfg
        if not Path(self.options.prior).is_dir():
            raise ConfigError(
                f"dreambooth: prior folder not found: {self.options.prior}; generate the class "
                "images first (ldmscale dreambooth does) or set prior = '' for no prior"
            )
        lat, emb = resolve_cache_paths(
            latents=None, embeddings=None, data=self.options.prior, vae=cfg.vae,
            text_encoder=cfg.text_encoder, resolution=cfg.resolution,
            cache_dir=cfg.cache_dir or Path(cfg.run_dir) / "cache", progress=False,
        )  # fmt: skip
        prior = load_conditioning(lat, emb)
        if prior.rows["latent_mean"].shape[1:] != ctx.cond.rows["latent_mean"].shape[1:]:
            raise ConfigError("dreambooth: prior and instance latents differ in shape")
        self.prior_rows = {k: v.to(ctx.device) for k, v in prior.rows.items()}

    def loss(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> torch.Tensor:
        if self.options.prior and self.prior_rows is None:
            raise RuntimeError("DreamBooth: call setup() first (it loads the prior rows)")
        if self.prior_rows is None or self.options.prior_weight == 0:
            return self.t2i.loss(model, batch, generator)
        n_prior = self.prior_rows["latent_mean"].shape[0]
        idx = torch.randint(0, n_prior, (self.options.prior_batch,), generator=generator)
        idx = idx.to(self.prior_rows["latent_mean"].device)
        prior = {k: v[idx] for k, v in self.prior_rows.items()}
        inst_loss = self.t2i.loss(model, batch, generator)
        prior_loss = self.t2i.loss(model, prior, generator)
        return inst_loss + self.options.prior_weight * prior_loss


def build(cfg: TrainConfig) -> DreamBooth:
    """The DreamBooth objective of ``cfg``: its ``objective_options`` (see
    :class:`DreamBoothOptions`) and the t2i settings of ``cfg``'s top-level keys."""
    options = read_options(DreamBoothOptions, cfg)
    t2i = build_t2i(cfg.replace(objective_options={}))
    return DreamBooth(t2i=t2i, options=options)
