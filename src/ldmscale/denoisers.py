"""Denoisers: how the UNet is evaluated at one sampler step, behind one call.

A denoiser is called as ``denoiser(x, t) -> prediction`` (the UNet's output convention:
epsilon, v or sample, whatever the model was trained to predict) on the scheduler-scaled
latents ``x [B, C, h, w]``; the sampling loop (:func:`ldmscale.sampling.sample_loop`) knows
nothing else about the model. This is k-diffusion's seam: guidance, extra conditioning
inputs and their batch layout live here. Each denoiser states ``evaluations_per_step``, the
UNet evaluations per image per step (the cost rule is :mod:`ldmscale.cost`).

* :class:`UNetDenoiser`: one forward; optional image ``concat`` (channels appended to the
  latents, e.g. a low-resolution image for super-resolution), ``class_labels`` (e.g. its
  noise level) and ``timestep_cond``.
* :class:`CFGDenoiser`: classifier-free guidance ``u + w (c - u)`` on one forward of the
  doubled batch, unconditional half first.
* :func:`guidance_embedding_denoiser`: guidance given to the UNet as an embedding
  (``timestep_cond``, as guidance-distilled models take it): one forward, no doubling.
* :func:`make_denoiser`: the one of the two a text-to-image UNet needs (its config says).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from ldmscale.cost import cfg_evaluations


class Denoiser(Protocol):
    """``denoiser(x, t)``: the model prediction at timestep ``t`` for latents ``x``."""

    evaluations_per_step: int

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...


@dataclass
class UNetDenoiser:
    """One UNet forward on ``x`` (with ``concat`` appended on the channel axis)."""

    unet: torch.nn.Module
    context: torch.Tensor
    concat: torch.Tensor | None = None
    class_labels: torch.Tensor | None = None
    timestep_cond: torch.Tensor | None = None

    evaluations_per_step: int = 1

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.concat is not None:
            x = torch.cat([x, self.concat], dim=1)
        return self.unet(
            x,
            t,
            encoder_hidden_states=self.context,
            class_labels=self.class_labels,
            timestep_cond=self.timestep_cond,
            return_dict=False,
        )[0]


class CFGDenoiser:
    """Classifier-free guidance: ``u + w (c - u)`` from one forward of the doubled batch
    (unconditional half first); at ``w = 1`` one forward of the conditional batch only.

    ``uncond`` is the unconditional context (``[1 or B, L, D]``, e.g. the empty prompt's);
    ``concat`` and ``class_labels`` (conditioning shared by both halves) are doubled too.
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        context: torch.Tensor,
        uncond: torch.Tensor | None,
        guidance: float,
        concat: torch.Tensor | None = None,
        class_labels: torch.Tensor | None = None,
    ) -> None:
        self.guidance = float(guidance)
        self.evaluations_per_step = cfg_evaluations(self.guidance)
        self.doubled = self.evaluations_per_step == 2
        if self.doubled:
            if uncond is None:
                raise ValueError("guidance != 1 needs the unconditional context")
            n = context.shape[0]
            context = torch.cat([uncond.expand(n, -1, -1), context])
            if concat is not None:
                concat = torch.cat([concat] * 2)
            if class_labels is not None:
                class_labels = torch.cat([class_labels] * 2)
        self.inner = UNetDenoiser(unet, context, concat, class_labels)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not self.doubled:
            return self.inner(x, t)
        pred = self.inner(torch.cat([x] * 2), t)
        uncond, cond = pred.chunk(2)
        return uncond + self.guidance * (cond - uncond)


def guidance_scale_embedding(
    guidance: torch.Tensor, dim: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Sinusoidal embedding ``[B, dim]`` of guidance scales ``[B]`` (of ``1000 w``, sin half
    first), the convention of guidance-distilled UNets' ``timestep_cond`` (LCM's, after
    Meng et al. 2023; equal to ``LatentConsistencyModelPipeline.get_guidance_scale_embedding``).
    Written here because diffusers keeps it a pipeline method."""
    w = guidance.float() * 1000.0
    half = dim // 2
    # The frequencies in the float32 operation order of diffusers' LCM pipeline: the arguments
    # reach 1000 w, so a last-bit difference in a frequency moves the sine by ~1e-4.
    step = torch.log(torch.tensor(10000.0)) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -step).to(w.device)
    emb = w[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    if dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb.to(dtype)


def guidance_embedding_denoiser(
    unet: torch.nn.Module, context: torch.Tensor, guidance: float
) -> UNetDenoiser:
    """A denoiser for a UNet that takes guidance as ``timestep_cond``
    (``unet.config.time_cond_proj_dim`` set): the embedding of ``w - 1``, as LCM does, so that
    ``w = 1`` embeds 0; one forward per step."""
    dim = unet.config.time_cond_proj_dim
    if not dim:
        raise ValueError("this UNet takes no guidance embedding (time_cond_proj_dim is unset)")
    n = context.shape[0]
    w = torch.full((n,), float(guidance) - 1.0, device=context.device)
    return UNetDenoiser(
        unet, context, timestep_cond=guidance_scale_embedding(w, dim, context.dtype)
    )


def takes_guidance_embedding(unet: torch.nn.Module) -> bool:
    """Whether ``unet`` takes guidance as ``timestep_cond`` (its ``time_cond_proj_dim`` is set)."""
    return bool(getattr(unet.config, "time_cond_proj_dim", None))


def make_denoiser(
    unet: torch.nn.Module, context: torch.Tensor, uncond: torch.Tensor | None, guidance: float
) -> Denoiser:
    """The denoiser of a text-to-image UNet at guidance ``w``: the guidance embedding (one
    forward per step) when the UNet takes one, else :class:`CFGDenoiser` (``uncond`` may be None
    at ``w = 1``, or for an embedding UNet). ``evaluations_per_step`` follows
    :func:`ldmscale.cost.evaluations_per_step`."""
    if takes_guidance_embedding(unet):
        return guidance_embedding_denoiser(unet, context, guidance)
    return CFGDenoiser(unet, context, uncond, guidance)
