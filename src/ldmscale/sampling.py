"""Sampling: DDIM / DDPM / DPM-Solver++ over diffusers schedulers, batched CFG, per-image seeds.

Conventions (docs/sampling.md has the long form):

* **Samplers** are diffusers schedulers built with ``from_config`` from the model's training
  scheduler config, one entry each in :mod:`ldmscale.samplers`: ``ddim`` = ``DDIMScheduler``
  with eta = 0 (deterministic), ``ddpm`` = ``DDPMScheduler`` (ancestral, fresh noise every
  step), ``dpmpp`` = ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++",
  solver_order=2)`` (DPM-Solver++ 2M, deterministic; first-order on the first and — below 15
  steps — the last step, final sigma zero), ``lcm`` = ``LCMScheduler`` (multistep consistency
  sampling of consistency-distilled models; at most ``original_inference_steps`` steps). Any
  step count >= 1.
* **The loop** (:func:`sample_loop`) only steps the scheduler; how the UNet is evaluated
  (guidance, extra inputs) is the denoiser's (:mod:`ldmscale.denoisers`).
* **Timestep spacing** is the scheduler config's ``timestep_spacing`` (as
  ``StableDiffusionPipeline`` does, so both pick the same timesteps), unless
  ``SamplerConfig.timestep_spacing`` overrides it (``"trailing"`` is the better choice for very
  few steps: with ``"leading"`` a 1-step sampler evaluates the UNet at t=0 only).
* **Guidance**: ``eps = u + w * (c - u)`` with ``u`` the prediction for the empty prompt
  (``encode([""])``); one UNet forward of the doubled batch ``torch.cat([latents] * 2)``
  (unconditional half first). ``w = 1`` is no guidance: the unconditional half is skipped and
  the UNet runs once on the un-doubled batch. (Unlike diffusers, w < 1 is still guided.) A UNet
  that takes guidance as an embedding (``time_cond_proj_dim``, e.g. an LCM-distilled student)
  gets ``timestep_cond = embed(w - 1)`` instead: one forward per step at every ``w``
  (:func:`ldmscale.denoisers.make_denoiser`).
* **Seeds**: image ``i`` uses ``torch.Generator("cpu").manual_seed(seeds[i])`` for its initial
  noise and all of its sampler noise, so an image does not depend on the batch size.
* **Cost** (:mod:`ldmscale.cost`): ``nfe`` = steps (a doubled CFG batch counts once);
  ``sampling_cost`` = ``norm_cost * steps``; ``flops`` = actual UNet FLOPs of the request,
  ``dense`` convention, including the doubled CFG batch (never doubled for a guidance-embedding
  UNet; VAE decoding and text encoding are not counted; they do not depend on the sampler or
  step count).
"""

from __future__ import annotations

import io
import json
import math
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ldmscale import cost
from ldmscale.config import Config, ConfigError
from ldmscale.denoisers import Denoiser, make_denoiser, takes_guidance_embedding
from ldmscale.io import atomic_write_bytes, atomic_write_json
from ldmscale.model import DiffusionModel
from ldmscale.provenance import code_version
from ldmscale.samplers import SPACINGS, get_sampler, make_scheduler

SAMPLES_FILE = "samples.json"


class SamplingError(ValueError):
    """A sampling request that cannot run; the message says how to fix it."""


@dataclass
class SamplerConfig(Config):
    """How to sample.

    name: a sampler of :data:`ldmscale.samplers.SAMPLERS`: "ddim" (eta=0) | "ddpm"
        (ancestral) | "dpmpp" (DPM-Solver++ 2M) | "lcm" (consistency-distilled models).
    steps: sampler steps (>= 1); equals UNet evaluations per image.
    guidance: CFG scale w in ``eps = u + w (c - u)``; 1 = no guidance.
    timestep_spacing: None = the scheduler config's; or "leading" | "trailing" | "linspace".
    """

    name: str = "ddim"
    steps: int = 50
    guidance: float = 7.5
    timestep_spacing: str | None = None

    def __post_init__(self) -> None:
        get_sampler(self.name)
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(f"SamplerConfig.steps must be an integer >= 1, got {self.steps!r}")
        if not math.isfinite(self.guidance):
            raise ConfigError(f"SamplerConfig.guidance must be finite, got {self.guidance!r}")
        if self.timestep_spacing is not None and self.timestep_spacing not in SPACINGS:
            raise ConfigError(
                f"unknown timestep_spacing {self.timestep_spacing!r}; choose one of "
                f"{list(SPACINGS)} or leave it unset to use the scheduler config's"
            )

    @property
    def guided(self) -> bool:
        """Whether CFG runs (the doubled batch); ``w = 1`` is exactly the conditional model."""
        return cost.cfg_evaluations(self.guidance) == 2


@dataclass
class SampleResult:
    """What `generate` returns.

    images: uint8 ``[N, H, W, 3]``; latents: float32 ``[N, C, h, w]`` on the CPU (the final
    latents before ``1 / scaling_factor``); nfe: UNet evaluations per image; sampling_cost:
    norm_cost x steps; flops: UNet FLOPs of the whole request (dense, incl. the CFG doubling);
    evaluations_per_step: UNet evaluations per image per step (2 with CFG's doubled batch).
    """

    images: np.ndarray
    latents: torch.Tensor
    prompts: list[str]
    seeds: list[int]
    config: SamplerConfig
    nfe: int
    sampling_cost: float
    flops: float
    gflops_per_forward: float
    norm_cost: float
    model_name: str
    seconds: float
    model_info: dict[str, Any] = field(default_factory=dict)
    evaluations_per_step: int = 1


def expand_requests(
    prompts: list[str],
    n_per_prompt: int = 1,
    seed: int | None = None,
    seeds: list[int] | None = None,
) -> tuple[list[str], list[int]]:
    """Per-image prompts and seeds: each prompt ``n_per_prompt`` times, prompt-major.

    ``seeds`` of length ``n_per_prompt`` are reused for every prompt; of length
    ``len(prompts) * n_per_prompt`` they are taken as given. Otherwise image ``j`` gets
    ``seed + j`` (``seed`` defaults to 0).
    """
    if not prompts:
        raise SamplingError("no prompts given; pass at least one prompt")
    if n_per_prompt < 1:
        raise SamplingError(f"n_per_prompt must be >= 1, got {n_per_prompt}")
    per_image = [p for p in prompts for _ in range(n_per_prompt)]
    n = len(per_image)
    if seeds is not None:
        if seed is not None:
            raise SamplingError("give either seed or seeds, not both")
        seeds = [int(s) for s in seeds]
        if len(seeds) == n_per_prompt:
            seeds = seeds * len(prompts)
        elif len(seeds) != n:
            raise SamplingError(
                f"got {len(seeds)} seeds for {len(prompts)} prompt(s) x {n_per_prompt} image(s); "
                f"give {n_per_prompt} (reused per prompt) or {n} seeds"
            )
        return per_image, seeds
    base = 0 if seed is None else int(seed)
    return per_image, [base + j for j in range(n)]


def generate(
    model: DiffusionModel,
    prompts: list[str],
    seeds: list[int],
    cfg: SamplerConfig,
    batch_size: int = 16,
    progress: bool = True,
) -> SampleResult:
    """Sample one image per (prompt, seed) pair; see the module docstring for conventions."""
    prompts, seeds = list(prompts), [int(s) for s in seeds]
    if len(prompts) != len(seeds):
        raise SamplingError(
            f"{len(prompts)} prompts but {len(seeds)} seeds: give one seed per image "
            "(expand_requests builds both lists)"
        )
    if not prompts:
        raise SamplingError("nothing to sample: the prompt list is empty")
    if batch_size < 1:
        raise SamplingError(f"batch_size must be >= 1, got {batch_size}")
    start = time.perf_counter()
    embedded = takes_guidance_embedding(model.unet)
    per_step = cost.evaluations_per_step(cfg.guidance, embedded)
    with torch.inference_mode():
        null = model.encode_prompts([""]) if per_step == 2 else None

    def batch(sl: slice, bar: tqdm) -> torch.Tensor:
        return _sample_batch(model, prompts[sl], seeds[sl], cfg, null, bar)

    desc = f"sampling {cfg.name} x{cfg.steps}"
    latents, images = run_batches(model, len(prompts), batch_size, cfg.steps, desc, batch, progress)
    return SampleResult(
        images=images,
        latents=latents,
        prompts=prompts,
        seeds=seeds,
        config=cfg,
        nfe=cost.nfe(cfg.steps),
        sampling_cost=cost.sampling_cost(model.norm_cost, cfg.steps),
        flops=cost.sampling_flops(model.gflops_per_forward, cfg.steps, per_step, len(prompts)),
        gflops_per_forward=model.gflops_per_forward,
        norm_cost=model.norm_cost,
        model_name=model.name,
        seconds=time.perf_counter() - start,
        model_info={
            "path": str(model.path),
            "format": model.source_format,
            "prediction_type": model.prediction_type,
            "scaling_factor": model.scaling_factor,
            "model_code_version": model.code_version,
            "notes": list(model.notes),
        },
        evaluations_per_step=per_step,
    )


def run_batches(
    model: DiffusionModel,
    n: int,
    batch_size: int,
    steps: int,
    desc: str,
    sample_batch: Callable[[slice, tqdm], torch.Tensor],
    progress: bool = True,
) -> tuple[torch.Tensor, np.ndarray]:
    """Run ``sample_batch(images slice, bar) -> final latents`` over ``n`` images in batches
    of ``batch_size`` under one ``steps``-per-batch progress bar, and decode each batch.
    Returns ``(latents float32 [n, C, h, w] on the CPU, images uint8 [n, H, W, 3])``."""
    latents_out: list[torch.Tensor] = []
    images_out: list[np.ndarray] = []
    bar = tqdm(
        total=math.ceil(n / batch_size) * steps, desc=desc, unit="step", disable=not progress
    )
    with torch.inference_mode():
        for b0 in range(0, n, batch_size):
            latents = sample_batch(slice(b0, b0 + batch_size), bar)
            latents_out.append(latents.float().cpu())
            images_out.append(decode_latents(model, latents))
    bar.close()
    return torch.cat(latents_out), np.concatenate(images_out)


def _sample_batch(
    model: DiffusionModel,
    prompts: list[str],
    seeds: list[int],
    cfg: SamplerConfig,
    null: torch.Tensor | None,
    bar: tqdm,
) -> torch.Tensor:
    """Run the sampler on one batch; returns the final latents ``[B, C, h, w]``."""
    from diffusers.utils.torch_utils import randn_tensor

    # fresh: multistep solvers keep state
    scheduler = make_scheduler(model.scheduler_config, cfg.name, cfg.timestep_spacing)
    denoiser = make_denoiser(model.unet, model.encode_prompts(prompts), null, cfg.guidance)
    # One CPU generator per image: randn_tensor draws row i from generators[i], and the
    # sampler's step noise continues the same stream.
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    noise = randn_tensor(
        (len(seeds), *model.latent_shape),
        generator=generators,
        device=model.device,
        dtype=model.dtype,
    )
    return sample_loop(denoiser, scheduler, noise, cfg.steps, cfg.name, generators, bar)


def sample_loop(
    denoiser: Denoiser,
    scheduler: Any,
    noise: torch.Tensor,
    steps: int,
    sampler: str,
    generators: list[torch.Generator] | None = None,
    bar: tqdm | None = None,
) -> torch.Tensor:
    """Integrate unit-variance ``noise`` ``[B, C, h, w]`` to final latents with a fresh
    ``scheduler`` of ``sampler`` (:func:`ldmscale.samplers.make_scheduler`) over ``steps``
    steps, calling ``denoiser`` once per step. Stochastic samplers draw image ``i``'s step
    noise from ``generators[i]``."""
    scheduler.set_timesteps(steps, device=noise.device)
    step_kwargs: dict[str, Any] = {"generator": generators, **get_sampler(sampler).step_options}
    latents = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        pred = denoiser(scheduler.scale_model_input(latents, t), t)
        latents = scheduler.step(pred, t, latents, **step_kwargs, return_dict=False)[0]
        if bar is not None:
            bar.update(1)
    return latents


def decode_latents(model: DiffusionModel, latents: torch.Tensor) -> np.ndarray:
    """Latents -> uint8 ``[B, H, W, 3]`` (``vae.decode(z / scaling_factor)``, [-1, 1] -> [0, 255])."""
    with torch.inference_mode():
        x = model.vae.decode(latents / model.scaling_factor, return_dict=False)[0]
        x = (x / 2 + 0.5).clamp(0, 1)
        x = x.permute(0, 2, 3, 1).float().cpu().numpy()
    return (x * 255).round().astype(np.uint8)


def make_grid(
    images: np.ndarray, captions: list[str], ncols: int | None = None, min_cell: int = 128
):
    """A PIL image: images in a grid, each with its caption wrapped underneath (PIL default font).

    Images narrower than ``min_cell`` pixels are upscaled (nearest) so captions stay legible.
    """
    from PIL import Image, ImageDraw, ImageFont

    n, h, w = images.shape[:3]
    ncols = ncols or min(n, max(1, math.ceil(math.sqrt(n))))
    nrows = math.ceil(n / ncols)
    scale = max(1, math.ceil(min_cell / w))
    cw, ch = w * scale, h * scale
    font = ImageFont.load_default()
    char_w = max(1.0, font.getlength("x"))
    line_h = int(font.getbbox("Ag")[3]) + 2
    chars_per_line = max(4, int((cw - 4) / char_w))
    max_lines = 4
    wrapped = []
    for cap in captions:
        lines = textwrap.wrap(cap, chars_per_line) or [""]
        if len(lines) > max_lines:
            lines = lines[:max_lines]
            lines[-1] = lines[-1][: max(0, chars_per_line - 3)] + "..."
        wrapped.append(lines)
    text_h = line_h * max(len(lines) for lines in wrapped) + 4
    pad = 4
    grid = Image.new("RGB", (ncols * (cw + pad) + pad, nrows * (ch + text_h + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for i in range(n):
        r, c = divmod(i, ncols)
        x0, y0 = pad + c * (cw + pad), pad + r * (ch + text_h + pad)
        tile = Image.fromarray(images[i])
        if scale > 1:
            tile = tile.resize((cw, ch), Image.NEAREST)
        grid.paste(tile, (x0, y0))
        for k, line in enumerate(wrapped[i]):
            draw.text((x0 + 2, y0 + ch + 2 + k * line_h), line, fill="black", font=font)
    return grid


def _png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def save_samples(
    result: SampleResult, prompts: list[str] | None = None, out_dir: str | Path = "samples"
) -> Path:
    """Write ``00000.png``..., a captioned ``grid.png`` and, last, ``samples.json``.

    ``prompts`` (per image) default to ``result.prompts``. ``samples.json`` is removed first and
    written last (atomically), so its presence marks a complete folder.
    """
    from PIL import Image

    out = Path(out_dir)
    prompts = list(result.prompts if prompts is None else prompts)
    if len(prompts) != len(result.images):
        raise SamplingError(f"{len(prompts)} prompts for {len(result.images)} images")
    out.mkdir(parents=True, exist_ok=True)
    (out / SAMPLES_FILE).unlink(missing_ok=True)
    files = []
    for i, img in enumerate(result.images):
        name = f"{i:05d}.png"
        atomic_write_bytes(out / name, _png_bytes(Image.fromarray(img)))
        files.append(name)
    captions = [f"{p} (seed {s})" for p, s in zip(prompts, result.seeds)]
    atomic_write_bytes(out / "grid.png", _png_bytes(make_grid(result.images, captions)))
    cfg = result.config
    record = {
        "model": result.model_name,
        "model_info": result.model_info,
        "sampler": cfg.to_dict(),
        "guided": cfg.guided,
        "nfe": result.nfe,
        "norm_cost": result.norm_cost,
        "sampling_cost": result.sampling_cost,
        "flops": result.flops,
        "flops_per_image": result.flops / len(prompts),
        "unet_evaluations_per_step": result.evaluations_per_step,
        "gflops_per_forward": result.gflops_per_forward,
        "flops_convention": "dense UNet FLOPs (FlopCounterMode, 2 per multiply-add), "
        "CFG doubled batch included, VAE decode and text encoder excluded",
        "seconds": result.seconds,
        "code_version": code_version(),
        "prompts": prompts,
        "seeds": list(result.seeds),
        "images": [
            {"file": f, "prompt": p, "seed": s} for f, p, s in zip(files, prompts, result.seeds)
        ],
        "grid": "grid.png",
        "image_size": list(result.images.shape[1:3]),
    }
    atomic_write_json(out / SAMPLES_FILE, record)
    return out


def read_samples(out_dir: str | Path) -> dict[str, Any]:
    """Read ``samples.json`` of a complete sample folder."""
    path = Path(out_dir) / SAMPLES_FILE
    if not path.is_file():
        raise SamplingError(
            f"{path} not found: the folder is missing or was not written completely"
        )
    return json.loads(path.read_text())
