"""Super-resolution metrics: per-image scores of SR outputs against their ground truth.

All take uint8 RGB images ``[N, H, W, 3]`` and the ground-truth (HR) images of the same shape,
image ``i`` against HR ``i``, and return one float64 value per image, so a paired bootstrap
(:mod:`ldmscale.paired`) can compare two methods on the same images:

- :func:`psnr`: peak signal-to-noise ratio in dB, peak 255, on all pixels and channels
  (an identical pair gets :data:`PSNR_CAP` dB instead of infinity);
- :func:`ssim`: structural similarity (Wang et al. 2004) with an 11-tap Gaussian window
  (σ = 1.5 px), K1 = 0.01, K2 = 0.03, L = 255, per channel, averaged over the window positions
  that fit inside the image ("valid", no padding) and over the channels; equal to
  scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=255, channel_axis=-1)`` (which crops the padded
  border);
- :func:`attribute_hits`: on ``shapes``, the shapes probe's read-out of each SR image against
  the HR image's ground-truth ``attributes``: the fraction of the true objects' attributes
  (shape, colour, size) it gets right (``attr_acc``) and the fraction of objects with all
  three right (``object_acc``).

The Fréchet distance of SR outputs against the HR references is the registry's ``fd_probe``
(or ``fd_effnet`` / ``fid``), computed from feature rows as for text-to-image. There is no
LPIPS here (its network is not available offline).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ldmscale.metrics.common import MetricsError

PSNR_CAP = 100.0
"""PSNR (dB) given to an image equal to its ground truth (the MSE is 0)."""
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _pair(images: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(images), np.asarray(reference)
    if a.dtype != np.uint8 or b.dtype != np.uint8:
        raise MetricsError(f"SR metrics take uint8 images, got {a.dtype} and {b.dtype}")
    if a.ndim != 4 or a.shape[-1] != 3 or a.shape != b.shape:
        raise MetricsError(
            f"SR metrics need images and ground truth of one shape [N, H, W, 3], got "
            f"{a.shape} and {b.shape}; upscale to the HR size first"
        )
    return a.astype(np.float64), b.astype(np.float64)


def psnr(images: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """PSNR in dB of each image against its reference, ``[N]`` float64 (peak 255)."""
    a, b = _pair(images, reference)
    mse = ((a - b) ** 2).mean(axis=(1, 2, 3))
    with np.errstate(divide="ignore"):
        out = 10.0 * np.log10(255.0**2 / mse)
    return np.minimum(out, PSNR_CAP)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """The 1-D Gaussian of ``size`` taps (odd), normalised to sum 1."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    w = np.exp(-(x**2) / (2 * sigma**2))
    return w / w.sum()


def _filter_valid(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of ``x`` [..., H, W] with the 1-D window ``w``."""
    k = len(w)
    h = sum(w[i] * x[..., i : x.shape[-2] - k + 1 + i, :] for i in range(k))
    return sum(w[i] * h[..., :, i : x.shape[-1] - k + 1 + i] for i in range(k))


def ssim(images: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """SSIM of each image against its reference, ``[N]`` float64 (see the module docstring)."""
    a, b = _pair(images, reference)
    if min(a.shape[1:3]) < SSIM_WINDOW:
        raise MetricsError(f"SSIM needs images of at least {SSIM_WINDOW} px, got {a.shape[1:3]}")
    a, b = a.transpose(0, 3, 1, 2), b.transpose(0, 3, 1, 2)  # [N, 3, H, W]
    w = gaussian_window()
    mu_a, mu_b = _filter_valid(a, w), _filter_valid(b, w)
    var_a = _filter_valid(a * a, w) - mu_a**2
    var_b = _filter_valid(b * b, w) - mu_b**2
    cov = _filter_valid(a * b, w) - mu_a * mu_b
    c1, c2 = (SSIM_K1 * 255.0) ** 2, (SSIM_K2 * 255.0) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    return s.mean(axis=(1, 2, 3))


def attribute_hits(
    images: np.ndarray, attributes: Sequence[dict[str, Any] | list[dict[str, Any]]], probe: Any
) -> dict[str, np.ndarray]:
    """Per image, the probe's read-out against the ground-truth ``attributes`` (one record per
    image): ``{"attr_acc": [N], "object_acc": [N]}`` (fractions of the true objects' attributes
    and of the true objects that the probe reads right; an image without objects scores 1 if the
    probe sees none)."""
    from ldmscale.metrics.probe import encode_attributes

    if len(attributes) != len(images):
        raise MetricsError(f"{len(images)} images but {len(attributes)} attribute records")
    true = np.stack([encode_attributes(a, probe.vocab) for a in attributes])
    pred = probe.predict_labels(np.asarray(images))
    occupied = true[..., 0] > 0  # [N, P]
    right = pred == true  # [N, P, 3]
    n_obj = occupied.sum(1)
    empty_ok = (pred[..., 0] == 0).all(1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        attr = (right * occupied[..., None]).sum((1, 2)) / (3 * n_obj)
        obj = (right.all(-1) & occupied).sum(1) / n_obj
    return {
        "attr_acc": np.where(n_obj > 0, attr, empty_ok),
        "object_acc": np.where(n_obj > 0, obj, empty_ok),
    }
