"""Real-ESRGAN's second-order degradation: high-resolution image in, low-resolution image out.

``degrade(hr, cfg, generator)`` turns a uint8 ``[H, W, 3]`` image (or ``[B, H, W, 3]``
batch) into a uint8 ``[H/s, W/s, 3]`` image (or batch), ``s = cfg.scale``, as Real-ESRGAN
(Wang et al. 2021, ``RealESRGANModel.feed_data``) synthesises its training inputs:

1. unsharp-mask the HR image (``usm_weight > 0``);
2. first round: blur (a random Gaussian-family kernel, or a sinc with ``sinc_prob``), random
   resize (up/down/keep, then a scale, then a mode among ``resize_modes``), Gaussian or
   Poisson noise (grey with ``gray_noise_prob``), JPEG;
3. second round: the same, the blur only with ``blur_prob``, the resize relative to the
   target size ``H/s``;
4. with probability 1/2 each: [resize to ``H/s`` + sinc] then JPEG, or JPEG then
   [resize + sinc]; the final sinc is a pulse (no filter) with ``1 - final_sinc_prob``;
5. round to the 1/255 grid.

Every random draw of image ``i`` comes from its own ``torch.Generator`` (pass one per image),
in a fixed order, so an image's degradation does not depend on the batch it is in.
Deviations from the original, all deliberate: JPEG is a Pillow (libjpeg) round trip at an
integer quality drawn uniformly from ``jpeg_range`` (Real-ESRGAN: its differentiable DiffJPEG
at a real-valued quality); grey Gaussian noise is drawn per image (basicsr broadcasts one
pattern over the batch); there is no 180-image pool (it carries state across steps);
reflect padding falls back to replicate padding when a kernel is wider than the image
(``F.pad`` cannot reflect more than the image side). Noise σ is in 0-255 units, as published.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ldmscale.config import Config
from ldmscale.data.dataset import DataError
from ldmscale.data.kernels import (
    choice,
    gaussian_kernel,
    pulse_kernel,
    random_kernel,
    sinc_kernel,
    uniform,
)

_PUBLISHED_SIZES = tuple(range(7, 22, 2))
_KERNEL_PROB = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
_GRAY = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma weights


@dataclasses.dataclass
class BlurConfig(Config):
    """One round's blur kernel. Sizes are odd, in pixels; σ in pixels; the sinc's cut-off
    ω_c ~ U[π/3, π] for sizes below ``wide_sinc_from``, else U[π/5, π] (radians per pixel)."""

    kernel_sizes: tuple[int, ...] = _PUBLISHED_SIZES
    kernel_prob: tuple[float, ...] = _KERNEL_PROB
    sinc_prob: float = 0.1
    sigma_range: tuple[float, float] = (0.2, 3.0)
    betag_range: tuple[float, float] = (0.5, 4.0)
    betap_range: tuple[float, float] = (1.0, 2.0)
    wide_sinc_from: int = 13


@dataclasses.dataclass
class RoundConfig(Config):
    """One degradation round: blur, resize, noise, JPEG.

    ``resize_prob`` is (up, down, keep); up draws the scale from U[1, hi], down from
    U[lo, 1] with ``resize_range = (lo, hi)``. ``noise_range`` is the Gaussian σ in 0-255
    units; ``poisson_scale_range`` multiplies Poisson noise; ``jpeg_range`` is the quality
    range (inclusive integers)."""

    blur: BlurConfig = dataclasses.field(default_factory=BlurConfig)
    blur_prob: float = 1.0
    resize_prob: tuple[float, float, float] = (0.2, 0.7, 0.1)
    resize_range: tuple[float, float] = (0.15, 1.5)
    gaussian_noise_prob: float = 0.5
    noise_range: tuple[float, float] = (1.0, 30.0)
    poisson_scale_range: tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_range: tuple[int, int] = (30, 95)


def _published_second_round() -> RoundConfig:
    return RoundConfig(
        blur=BlurConfig(sigma_range=(0.2, 1.5)),
        blur_prob=0.8,
        resize_prob=(0.3, 0.4, 0.3),
        resize_range=(0.3, 1.2),
        noise_range=(1.0, 25.0),
        poisson_scale_range=(0.05, 2.5),
    )


@dataclasses.dataclass
class DegradeConfig(Config):
    """The whole pipeline. The defaults are Real-ESRGAN's published ranges
    (``options/train_realesrnet_x4plus.yml``); :meth:`shapes32` adapts them to 32 px images.

    ``usm_*``: unsharp mask of the HR input (Gaussian of side ``2·usm_radius + 1`` with
    OpenCV's default σ for that size, weight, threshold in 0-255 units); ``usm_weight = 0``
    turns it off."""

    scale: int = 4
    first: RoundConfig = dataclasses.field(default_factory=RoundConfig)
    second: RoundConfig = dataclasses.field(default_factory=_published_second_round)
    final_sinc_prob: float = 0.8
    final_sinc_sizes: tuple[int, ...] = _PUBLISHED_SIZES
    resize_modes: tuple[str, ...] = ("area", "bilinear", "bicubic")
    usm_weight: float = 0.5
    usm_radius: int = 50
    usm_threshold: float = 10.0

    @classmethod
    def realesrgan(cls) -> DegradeConfig:
        """Real-ESRGAN's published ranges (meant for 256 px HR crops)."""
        return cls()

    @classmethod
    def shapes32(cls) -> DegradeConfig:
        """The adaptation for 32 px HR images (8 px LR); docs/sr.md gives the reasoning.

        Kernels 3-7 px (they must fit the 8 px LR, the final sinc acts there), σ halved
        (first [0.2, 1.5], second [0.2, 0.75]), resize kept within [0.5, 1.5] / [0.5, 1.2]
        so no image falls below 4 px, no unsharp mask; noise and JPEG as published."""
        small = (3, 5, 7)
        first = RoundConfig(
            blur=BlurConfig(kernel_sizes=small, sigma_range=(0.2, 1.5)),
            resize_range=(0.5, 1.5),
        )
        second = dataclasses.replace(
            _published_second_round(),
            blur=BlurConfig(kernel_sizes=small, sigma_range=(0.2, 0.75)),
            resize_range=(0.5, 1.2),
        )
        return cls(first=first, second=second, final_sinc_sizes=small, usm_weight=0.0)


PRESETS = {"realesrgan": DegradeConfig.realesrgan, "shapes32": DegradeConfig.shapes32}
"""Named degradation presets."""


def filter2d(img: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Convolve each channel of ``img`` [C, h, w] with ``kernel`` [k, k], same size out.

    Reflect padding, or replicate padding where the kernel's half-width reaches the image side."""
    pad = kernel.shape[-1] // 2
    if pad == 0:
        return img * kernel.reshape(()).to(img.dtype)
    mode = "reflect" if pad < min(img.shape[-2:]) else "replicate"
    x = F.pad(img[None], (pad, pad, pad, pad), mode=mode)
    weight = kernel.to(img.dtype).expand(img.shape[0], 1, *kernel.shape)
    return F.conv2d(x, weight, groups=img.shape[0])[0]


def unsharp_mask(img: torch.Tensor, weight: float, radius: int, threshold: float) -> torch.Tensor:
    """Sharpen ``img`` [C, h, w] in [0, 1]: add ``weight`` × (img − blur) where that detail
    exceeds ``threshold``/255, blended through a blurred mask."""
    size = 2 * radius + 1
    sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8  # OpenCV's default σ for a given size
    g = gaussian_kernel(size, sigma)
    detail = img - filter2d(img, g)
    mask = ((detail.abs() * 255) > threshold).to(img.dtype)
    soft = filter2d(mask, g)
    sharp = (img + weight * detail).clamp(0, 1)
    return soft * sharp + (1 - soft) * img


def resize(img: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize ``img`` [C, h, w] to ``size`` (h, w) with ``F.interpolate`` (no anti-aliasing)."""
    kw = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(img[None], size=size, mode=mode, **kw)[0]


def gaussian_noise(
    img: torch.Tensor, sigma: float, gray: bool, generator: torch.Generator
) -> torch.Tensor:
    """Additive Gaussian noise of standard deviation ``sigma`` (0-255 units) for ``img``
    [C, h, w] in [0, 1]; ``gray`` draws one pattern shared by the channels. Returns the noise."""
    shape = (1, *img.shape[1:]) if gray else img.shape
    noise = torch.randn(shape, generator=generator, dtype=img.dtype) * (sigma / 255.0)
    return noise.expand_as(img)


def poisson_noise(
    img: torch.Tensor, scale: float, gray: bool, generator: torch.Generator
) -> torch.Tensor:
    """Poisson (shot) noise for ``img`` [C, h, w] in [0, 1], times ``scale``; ``gray`` draws it
    on the BT.601 luma. The photon count per unit intensity is the number of distinct 8-bit
    levels in the image rounded up to a power of two. Returns the noise."""
    if gray:
        w = torch.tensor(_GRAY, dtype=img.dtype).reshape(3, 1, 1)
        img = (img * w).sum(0, keepdim=True)
    img = (img * 255).round().clamp(0, 255) / 255
    vals = 2 ** math.ceil(math.log2(max(len(torch.unique(img)), 1)))
    noise = torch.poisson(img * vals, generator=generator) / vals - img
    return (noise * scale).expand(3, *noise.shape[1:])


def jpeg(img: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG round trip of ``img`` [3, h, w] in [0, 1] through Pillow (4:2:0 chroma)."""
    arr = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="JPEG", quality=int(quality), subsampling=2)
    buf.seek(0)
    out = np.asarray(Image.open(buf).convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(out.copy()).permute(2, 0, 1).to(img.dtype) / 255.0


def _random_blur_kernel(g: torch.Generator, blur: BlurConfig) -> torch.Tensor:
    size = blur.kernel_sizes[choice(g, [1.0] * len(blur.kernel_sizes))]
    if uniform(g, 0.0, 1.0) < blur.sinc_prob:
        low = math.pi / 3 if size < blur.wide_sinc_from else math.pi / 5
        return sinc_kernel(size, uniform(g, low, math.pi))
    return random_kernel(
        g, size, blur.kernel_prob, blur.sigma_range, blur.betag_range, blur.betap_range
    )


def _random_resize(
    img: torch.Tensor, rc: RoundConfig, base: tuple[int, int], modes: Sequence[str], g
) -> torch.Tensor:
    kind = choice(g, rc.resize_prob)
    lo, hi = rc.resize_range
    s = uniform(g, 1.0, hi) if kind == 0 else uniform(g, lo, 1.0) if kind == 1 else 1.0
    mode = modes[choice(g, [1.0] * len(modes))]
    size = (max(1, int(base[0] * s)), max(1, int(base[1] * s)))
    return resize(img, size, mode)


def _random_noise(img: torch.Tensor, rc: RoundConfig, g: torch.Generator) -> torch.Tensor:
    use_gaussian = uniform(g, 0.0, 1.0) < rc.gaussian_noise_prob
    gray = uniform(g, 0.0, 1.0) < rc.gray_noise_prob
    if use_gaussian:
        noise = gaussian_noise(img, uniform(g, *rc.noise_range), gray, g)
    else:
        noise = poisson_noise(img, uniform(g, *rc.poisson_scale_range), gray, g)
    return (img + noise).clamp(0, 1)


def _random_jpeg(img: torch.Tensor, rc: RoundConfig, g: torch.Generator) -> torch.Tensor:
    lo, hi = rc.jpeg_range
    quality = int(torch.randint(lo, hi + 1, (), generator=g).item())
    return jpeg(img, quality)


def _round(
    img: torch.Tensor, rc: RoundConfig, base: tuple[int, int], modes: Sequence[str], g
) -> torch.Tensor:
    if rc.blur_prob >= 1.0 or uniform(g, 0.0, 1.0) < rc.blur_prob:
        img = filter2d(img, _random_blur_kernel(g, rc.blur))
    img = _random_resize(img, rc, base, modes, g)
    img = _random_noise(img, rc, g)
    return _random_jpeg(img, rc, g)


def degrade_one(hr: torch.Tensor, cfg: DegradeConfig, generator: torch.Generator) -> torch.Tensor:
    """Degrade one uint8 [H, W, 3] image to uint8 [H/s, W/s, 3]; all draws from ``generator``."""
    g = generator
    img = hr.permute(2, 0, 1).to(torch.float32) / 255.0
    height, width = img.shape[1:]
    lr_size = (height // cfg.scale, width // cfg.scale)
    if cfg.usm_weight > 0:
        img = unsharp_mask(img, cfg.usm_weight, cfg.usm_radius, cfg.usm_threshold)
    img = _round(img, cfg.first, (height, width), cfg.resize_modes, g)
    img = _round(img, cfg.second, lr_size, cfg.resize_modes, g)
    if uniform(g, 0.0, 1.0) < cfg.final_sinc_prob:
        size = cfg.final_sinc_sizes[choice(g, [1.0] * len(cfg.final_sinc_sizes))]
        final = sinc_kernel(size, uniform(g, math.pi / 3, math.pi))
    else:
        final = pulse_kernel()
    mode = cfg.resize_modes[choice(g, [1.0] * len(cfg.resize_modes))]
    if uniform(g, 0.0, 1.0) < 0.5:
        img = filter2d(resize(img, lr_size, mode), final)
        img = _random_jpeg(img.clamp(0, 1), cfg.second, g)
    else:
        img = _random_jpeg(img.clamp(0, 1), cfg.second, g)
        img = filter2d(resize(img, lr_size, mode), final)
    return (img * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous()


def _check_input(hr: torch.Tensor, cfg: DegradeConfig, hr_size: int | None) -> None:
    if hr.dtype != torch.uint8 or hr.ndim not in (3, 4) or hr.shape[-1] != 3:
        raise DataError(
            f"degrade expects uint8 RGB images [H, W, 3] or [B, H, W, 3], got "
            f"{hr.dtype} {tuple(hr.shape)}; convert with (x * 255).round().to(torch.uint8) and "
            "put channels last"
        )
    height, width = hr.shape[-3], hr.shape[-2]
    if hr_size is not None and (height < hr_size or width < hr_size):
        raise DataError(
            f"high-resolution image is {height}x{width} px, smaller than the target "
            f"{hr_size}x{hr_size}; use images of at least {hr_size} px (load_dataset resizes "
            "them with resolution=...) or a model trained at a smaller resolution"
        )
    if hr_size is not None and (height, width) != (hr_size, hr_size):
        raise DataError(
            f"high-resolution image is {height}x{width} px, larger than the target "
            f"{hr_size}x{hr_size}; crop or resize it to {hr_size} px first"
        )
    if height % cfg.scale or width % cfg.scale or height < cfg.scale or width < cfg.scale:
        raise DataError(
            f"high-resolution image {height}x{width} px is not a positive multiple of the "
            f"scale {cfg.scale} on both sides; crop it to a multiple of {cfg.scale}"
        )


def degrade(
    hr: torch.Tensor | np.ndarray,
    cfg: DegradeConfig,
    generator: torch.Generator | Sequence[torch.Generator],
    *,
    hr_size: int | None = None,
) -> torch.Tensor:
    """Degrade uint8 HR images [H, W, 3] or [B, H, W, 3] to uint8 LR [H/s, W/s, (3)].

    ``generator``: one ``torch.Generator`` per image (a single one for a single image), so
    image ``i``'s result depends only on its pixels and its generator. ``hr_size``: the HR
    side the caller needs (e.g. the model's resolution); other sizes raise :class:`DataError`.
    """
    hr = torch.as_tensor(hr)
    _check_input(hr, cfg, hr_size)
    if hr.ndim == 3:
        if not isinstance(generator, torch.Generator):
            generator = _single(generator)
        return degrade_one(hr, cfg, generator)
    gens = [generator] if isinstance(generator, torch.Generator) else list(generator)
    if len(gens) != hr.shape[0]:
        raise DataError(
            f"degrade got {hr.shape[0]} images and {len(gens)} generator(s); pass one "
            "torch.Generator per image (e.g. seeded by the image's index), so that an "
            "image's degradation does not depend on its batch"
        )
    return torch.stack([degrade_one(x, cfg, g) for x, g in zip(hr, gens, strict=True)])


def _single(generator: Sequence[torch.Generator]) -> torch.Generator:
    gens = list(generator)
    if len(gens) != 1:
        raise DataError(f"degrade got one image and {len(gens)} generators; pass one")
    return gens[0]


def upsample_bicubic(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic upsampling of uint8 [h, w, 3] or [B, h, w, 3] by ``scale``, uint8 out (the
    baseline an SR model must beat)."""
    x = torch.as_tensor(lr)
    single = x.ndim == 3
    x = (x[None] if single else x).permute(0, 3, 1, 2).to(torch.float32) / 255.0
    y = F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
    y = (y * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    return y[0] if single else y
