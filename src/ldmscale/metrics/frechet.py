"""Fréchet distance between two Gaussians fitted to features (the formula behind FID).

``d² = |mu1 - mu2|² + tr(S1 + S2 - 2 (S1 S2)^{1/2})``, with the matrix square root from
``scipy.linalg.sqrtm``. Numerics follow the usual practice (pytorch-fid, StyleGAN):

- if the square root is not finite (singular product, e.g. fewer images than feature
  dimensions), ``eps * I`` is added to both covariances and the root is taken again;
- a complex root caused by round-off is replaced by its real part; when the imaginary part
  on the diagonal exceeds ``1e-3`` a warning says so (it happens with tiny image counts).
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg

from ldmscale.metrics.common import FeatureStats, MetricsError


def _sqrtm(a: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        return scipy.linalg.sqrtm(a)


def frechet_distance(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    eps: float = 1e-6,
) -> float:
    """Fréchet distance (squared, as FID reports it) between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = (
        np.atleast_1d(np.asarray(mu1, np.float64)),
        np.atleast_1d(np.asarray(mu2, np.float64)),
    )
    s1, s2 = (
        np.atleast_2d(np.asarray(sigma1, np.float64)),
        np.atleast_2d(np.asarray(sigma2, np.float64)),
    )
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (len(mu1), len(mu1)):
        raise MetricsError(
            f"mismatched statistics: means {mu1.shape} vs {mu2.shape}, covariances "
            f"{s1.shape} vs {s2.shape}; both sides must come from the same feature network"
        )
    diff = mu1 - mu2
    covmean = _sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(s1)) * eps
        covmean = _sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.max(np.abs(np.diagonal(covmean).imag))
        if imag > 1e-3:
            warnings.warn(
                f"Fréchet distance: matrix square root has an imaginary diagonal part up to "
                f"{imag:.3g} (few images for the feature dimension); using its real part",
                stacklevel=2,
            )
        covmean = covmean.real
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def frechet_distance_stats(a: FeatureStats, b: FeatureStats, eps: float = 1e-6) -> float:
    """Fréchet distance between two :class:`FeatureStats`."""
    return frechet_distance(a.mean, a.cov, b.mean, b.cov, eps=eps)


def frechet_distance_features(
    feats: np.ndarray, ref: np.ndarray | FeatureStats, eps: float = 1e-6
) -> float:
    """Fréchet distance between features ``[N, D]`` and reference features or statistics."""
    a = FeatureStats.from_features(feats)
    b = ref if isinstance(ref, FeatureStats) else FeatureStats.from_features(ref)
    return frechet_distance_stats(a, b, eps=eps)
