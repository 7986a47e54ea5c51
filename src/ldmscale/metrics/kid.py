"""KID: kernel inception distance (Bińkowski et al. 2018).

Unbiased MMD² between generated and reference features with the cubic polynomial kernel
``k(x, y) = (x·y / d + 1)³``, averaged over ``n_subsets`` random subsets of
``min(1000, n_gen, n_ref)`` images drawn without replacement from each side. Reported as
mean and standard deviation over the subsets. KID is unbiased in the image count, so it is
usable on small sets where FID is not, but it is noisy there (see the std).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ldmscale.metrics.common import MetricsError


@dataclass(frozen=True)
class KIDResult:
    """KID mean and standard deviation over subsets, and the subset size used."""

    mean: float
    std: float
    subset_size: int
    n_subsets: int


def _poly(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² of two equal-size feature sets with the cubic polynomial kernel."""
    m = len(x)
    if m < 2 or len(y) != m:
        raise MetricsError(f"MMD needs two sets of equal size >= 2, got {len(x)} and {len(y)}")
    kxx, kyy, kxy = _poly(x, x), _poly(y, y), _poly(x, y)
    off = m * (m - 1)
    return float(
        (kxx.sum() - np.trace(kxx)) / off + (kyy.sum() - np.trace(kyy)) / off - 2.0 * kxy.mean()
    )


def kid(
    feats: np.ndarray,
    ref_feats: np.ndarray,
    subset_size: int = 1000,
    n_subsets: int = 100,
    seed: int = 0,
) -> KIDResult:
    """KID between generated features ``[N, D]`` and reference features ``[M, D]``."""
    x = np.asarray(feats, np.float64)
    y = np.asarray(ref_feats, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise MetricsError(f"KID needs features [N, D] and [M, D], got {x.shape} and {y.shape}")
    m = min(subset_size, len(x), len(y))
    if m < 2:
        raise MetricsError(f"KID needs at least 2 images on each side, got {len(x)} and {len(y)}")
    rng = np.random.default_rng(seed)
    vals = np.array(
        [
            mmd2_unbiased(
                x[rng.choice(len(x), m, replace=False)], y[rng.choice(len(y), m, replace=False)]
            )
            for _ in range(n_subsets)
        ]
    )
    return KIDResult(float(vals.mean()), float(vals.std()), m, n_subsets)
