"""Bootstrap confidence intervals over images.

Resample the rows (images) of an array with replacement, recompute a statistic, and report
the percentile interval shifted by the bootstrap's bias (``median(boots) - estimate``), so the
interval always contains the estimate. The shift matters for distribution metrics: a resample
with repeated images has less spread than the real set, which biases its Frechet distance
upwards (at 32-64 images the whole plain percentile interval can lie above the estimate).
For per-image means the median of the resamples equals the estimate up to noise, so the shift
is negligible. Works for per-image values (``statistic=np.mean`` over alignment
hits) and for distribution metrics (``statistic=lambda f: frechet_distance_features(f, ref)``
over the generated images' features; the reference is held fixed).
FD on 2,048-d Inception features costs a matrix square root (seconds) per resample, so use
``n_boot`` of 50-200 there; per-image statistics are cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ldmscale.metrics.common import MetricsError


@dataclass(frozen=True)
class BootstrapCI:
    """``estimate`` on all rows; ``low``/``high`` the ``1 - alpha`` bias-shifted percentile
    interval (``low <= estimate <= high``); ``bias`` = median of the resamples - estimate."""

    estimate: float
    low: float
    high: float
    std: float
    n_boot: int
    alpha: float
    bias: float = 0.0


def bootstrap_ci(
    values: np.ndarray,
    statistic: Callable[[np.ndarray], float] = np.mean,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> BootstrapCI:
    """Bias-shifted percentile bootstrap CI of ``statistic(values)``; rows (axis 0) are the
    images."""
    v = np.asarray(values)
    if v.ndim == 0 or len(v) < 2:
        raise MetricsError(f"bootstrap needs at least 2 images (rows), got shape {v.shape}")
    if not 0 < alpha < 1 or n_boot < 2:
        raise MetricsError(f"need 0 < alpha < 1 and n_boot >= 2, got {alpha}, {n_boot}")
    rng = np.random.default_rng(seed)
    n = len(v)
    boots = np.array([float(statistic(v[rng.integers(0, n, n)])) for _ in range(n_boot)])
    estimate = float(statistic(v))
    lo, median, hi = np.quantile(boots, [alpha / 2, 0.5, 1 - alpha / 2])
    bias = float(median) - estimate
    return BootstrapCI(
        estimate, float(lo) - bias, float(hi) - bias, float(boots.std()), n_boot, alpha, bias
    )
