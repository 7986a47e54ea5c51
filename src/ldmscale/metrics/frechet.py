"""Fréchet distance between two Gaussians fitted to features (the formula behind FID).

``d² = |mu1 - mu2|² + tr(S1 + S2 - 2 (S1 S2)^{1/2})``, with the matrix square root from
``scipy.linalg.sqrtm``. Numerics follow the usual practice (pytorch-fid, StyleGAN):

- if the square root is not finite (singular product, e.g. fewer images than feature
  dimensions), ``eps * I`` is added to both covariances and the root is taken again;
- a complex root caused by round-off is replaced by its real part; when the imaginary part
  on the diagonal exceeds ``1e-3`` a warning says so (it happens with tiny image counts).

:func:`fast_frechet` is the same distance to a fixed reference by another algorithm (one
eigendecomposition of the reference, then one symmetric ``eigvalsh`` per call), for the
bootstrap's many resamples; it agrees with :func:`frechet_distance` to rounding.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

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


def fast_frechet(ref_mean: np.ndarray, ref_cov: np.ndarray) -> Callable[[np.ndarray], float]:
    """A Fréchet distance to a fixed reference, fast enough to bootstrap.

    ``tr sqrt(S1 S2) = sum sqrt(eig(A S1 A))`` with ``A = S2^(1/2)`` (``S1 S2`` and ``A S1 A``
    share eigenvalues), so after one eigendecomposition of the reference covariance each
    resample costs a symmetric ``eigvalsh`` instead of a general matrix square root. With fewer
    images ``n`` than feature dimensions ``D`` (64 images of 2,048-d Inception features), ``A S1
    A = Y^T Y / (n - 1)`` with ``Y = Xc A`` has the nonzero eigenvalues of the ``n x n`` matrix
    ``Y Y^T / (n - 1)``, so the cost is ``O(n D^2)``, not ``O(D^3)`` (0.05 s instead of 1.6 s
    at n = 64, D = 2,048). Agrees with :func:`frechet_distance_features` to rounding.
    """
    mu2 = np.asarray(ref_mean, np.float64)
    s2 = np.asarray(ref_cov, np.float64)
    w, v = np.linalg.eigh((s2 + s2.T) / 2)
    a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    tr2 = float(np.trace(s2))
    dim = len(mu2)

    def statistic(feats: np.ndarray) -> float:
        f = np.asarray(feats, np.float64)
        n = len(f)
        mu1 = f.mean(0)
        diff = mu1 - mu2
        if n < 2:
            return float(diff @ diff + tr2)
        xc = f - mu1
        tr1 = float((xc * xc).sum()) / (n - 1)
        if n - 1 < dim:
            y = xc @ a
            m = (y @ y.T) / (n - 1)
        else:
            s1 = (xc.T @ xc) / (n - 1)
            m = a @ s1 @ a
        eig = np.linalg.eigvalsh((m + m.T) / 2)
        return float(diff @ diff + tr1 + tr2 - 2 * np.sqrt(np.clip(eig, 0, None)).sum())

    return statistic
