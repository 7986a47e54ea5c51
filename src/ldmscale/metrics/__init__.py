"""Evaluation metrics over uint8 images ``[N, H, W, 3]`` (or iterables of such batches).

- :mod:`~ldmscale.metrics.fid`: FID with the standard Inception-2015-12-05 network.
- :mod:`~ldmscale.metrics.kid`: KID (unbiased MMD², cubic polynomial kernel).
- :mod:`~ldmscale.metrics.effnet`: FD-EffNet, Fréchet distance on EfficientNet-Lite0 features.
- :mod:`~ldmscale.metrics.probe`: the ``shapes`` probe network and FD-probe.
- :mod:`~ldmscale.metrics.alignment`: text alignment on ``shapes`` via the probe.
- :mod:`~ldmscale.metrics.clip_score`: CLIP score from a local CLIP model.
- :mod:`~ldmscale.metrics.reference`: cached reference statistics of a dataset split.
- :mod:`~ldmscale.metrics.bootstrap`: bootstrap confidence intervals over images.

Submodules import torch and the feature networks lazily; import what you use.
"""

from ldmscale.metrics.bootstrap import BootstrapCI, bootstrap_ci
from ldmscale.metrics.common import (
    FeatureStats,
    MetricsError,
    compute_stats,
    extract_features,
)
from ldmscale.metrics.frechet import (
    frechet_distance,
    frechet_distance_features,
    frechet_distance_stats,
)
from ldmscale.metrics.kid import KIDResult, kid

__all__ = [
    "BootstrapCI",
    "FeatureStats",
    "KIDResult",
    "MetricsError",
    "bootstrap_ci",
    "compute_stats",
    "extract_features",
    "frechet_distance",
    "frechet_distance_features",
    "frechet_distance_stats",
    "kid",
]
