"""Sample a super-resolution model: low-resolution images in, high-resolution images out.

``upscale(model, lr_uint8, seeds, cfg)`` runs any sampler of :mod:`ldmscale.samplers` on an
SR model folder (``task = "sr"``, its ``ldmscale_model.json`` ``sr`` entry:
:class:`ldmscale.modelfolder.SRMeta`), as diffusers' ``StableDiffusionUpscalePipeline`` does:

- image ``i`` has its own CPU generator seeded ``seeds[i]``: first its initial latent noise,
  then its LR noise, then the sampler's step noise, so an image does not depend on its batch;
- the LR (uint8 ``[N, h, w, 3]``, h = w = the latent size) in [-1, 1] is noised at
  ``noise_level`` (default: the model's, 20) on the model's low-res schedule, concatenated to
  the (scaled) latents at every step, and the level is the UNet's ``class_labels``;
- no classifier-free guidance (``cfg.guidance`` must be 1): one UNet forward per step; the
  context is the empty caption's embedding, or ``prompts`` for a text-conditioned model.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm.auto import tqdm

from ldmscale import cost
from ldmscale.denoisers import UNetDenoiser
from ldmscale.model import DiffusionModel
from ldmscale.samplers import make_scheduler
from ldmscale.sampling import (
    SamplerConfig,
    SampleResult,
    SamplingError,
    run_batches,
    sample_loop,
)


def _check(model: DiffusionModel, lr: torch.Tensor, seeds: list[int], cfg: SamplerConfig) -> dict:
    sr = model.meta.get("sr")
    if not sr:
        raise SamplingError(
            f"model {model.name} is not a super-resolution model (its ldmscale_model.json has "
            "no 'sr' entry); train one with objective = 'sr'"
        )
    if cfg.guidance != 1.0:
        raise SamplingError(
            f"super-resolution samples without classifier-free guidance; set guidance 1, "
            f"got {cfg.guidance}"
        )
    _, h, w = model.latent_shape
    if lr.dtype != torch.uint8 or lr.ndim != 4 or tuple(lr.shape[1:]) != (h, w, 3):
        raise SamplingError(
            f"low-resolution images must be uint8 [N, {h}, {w}, 3] for {model.name} (x"
            f"{sr['scale']} to {h * sr['scale']} px), got {lr.dtype} {tuple(lr.shape)}; "
            f"degrade or resize the inputs to {h} px"
        )
    if len(seeds) != lr.shape[0] or not len(seeds):
        raise SamplingError(f"{lr.shape[0]} LR images but {len(seeds)} seeds: give one per image")
    return sr


def upscale(
    model: DiffusionModel,
    lr: np.ndarray | torch.Tensor,
    seeds: list[int],
    cfg: SamplerConfig,
    noise_level: int | None = None,
    prompts: list[str] | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> SampleResult:
    """One HR image per LR image (see the module docstring); ``prompts`` default to ``""``."""
    from diffusers import DDPMScheduler

    lr = torch.as_tensor(lr)
    seeds = [int(s) for s in seeds]
    sr = _check(model, lr, seeds, cfg)
    level = sr.get("noise_level", 20) if noise_level is None else int(noise_level)
    if not 0 <= level < sr["max_noise_level"]:
        raise SamplingError(f"noise_level must be in 0..{sr['max_noise_level'] - 1}, got {level}")
    prompts = [""] * len(seeds) if prompts is None else list(prompts)
    if len(prompts) != len(seeds):
        raise SamplingError(f"{len(prompts)} prompts for {len(seeds)} LR images")
    low_res = DDPMScheduler(**sr["low_res_schedule"])
    start = time.perf_counter()

    def batch(sl: slice, bar: tqdm) -> torch.Tensor:
        return _upscale_batch(model, lr[sl], seeds[sl], prompts[sl], cfg, level, low_res, bar)

    desc = f"upscaling {cfg.name} x{cfg.steps}"
    latents, images = run_batches(model, len(seeds), batch_size, cfg.steps, desc, batch, progress)
    return SampleResult(
        images=images,
        latents=latents,
        prompts=prompts,
        seeds=seeds,
        config=cfg,
        nfe=cost.nfe(cfg.steps),
        sampling_cost=cost.sampling_cost(model.norm_cost, cfg.steps),
        flops=cost.sampling_flops(model.gflops_per_forward, cfg.steps, 1, len(seeds)),
        gflops_per_forward=model.gflops_per_forward,
        norm_cost=model.norm_cost,
        model_name=model.name,
        seconds=time.perf_counter() - start,
        model_info={"path": str(model.path), "task": "sr", "noise_level": level},
    )


def _upscale_batch(model, lr, seeds, prompts, cfg, level, low_res, bar) -> torch.Tensor:
    from diffusers.utils.torch_utils import randn_tensor

    scheduler = make_scheduler(model.scheduler_config, cfg.name, cfg.timestep_spacing)
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    n = len(seeds)
    dev, dtype = model.device, model.dtype
    # Per image: initial noise, then LR noise, then the sampler's step noise (one stream).
    noise = torch.stack(
        [randn_tensor((1, *model.latent_shape), generator=g, dtype=dtype)[0] for g in generators]
    ).to(dev)
    lr_noise = torch.stack(
        [randn_tensor((1, 3, *lr.shape[1:3]), generator=g, dtype=dtype)[0] for g in generators]
    )
    image = lr.permute(0, 3, 1, 2).to(dtype) / 127.5 - 1.0
    levels = torch.full((n,), level, dtype=torch.long)
    concat = low_res.add_noise(image, lr_noise, levels).to(dev)
    context = model.encode_prompts(prompts)
    denoiser = UNetDenoiser(model.unet, context, concat=concat, class_labels=levels.to(dev))
    return sample_loop(denoiser, scheduler, noise, cfg.steps, cfg.name, generators, bar)
