"""Shared pieces of the metrics: image batches, feature extractors, streaming statistics.

Every metric takes uint8 images as a numpy array ``[N, H, W, 3]`` or as an iterable of such
batches (so a generator can stream images without holding them all). Feature extractors map
one uint8 batch to a float64 array ``[B, D]`` and carry a ``fingerprint`` that names the
network weights and the preprocessing, used in cache keys.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from ldmscale.io import atomic_path

ImageBatches = np.ndarray | Iterable[np.ndarray]


class MetricsError(ValueError):
    """A metric that cannot be computed as asked; the message says how to fix it."""


def check_batch(batch: Any) -> np.ndarray:
    """Return ``batch`` as a uint8 array ``[B, H, W, 3]`` or raise :class:`MetricsError`."""
    arr = np.asarray(batch)
    if arr.ndim == 3 and arr.shape[-1] == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise MetricsError(
            f"expected uint8 images shaped [N, H, W, 3], got shape {arr.shape}; "
            "convert channel-first tensors with x.permute(0, 2, 3, 1)"
        )
    if arr.dtype != np.uint8:
        raise MetricsError(
            f"expected uint8 images (0..255), got dtype {arr.dtype}; convert [-1, 1] floats "
            "with ((x + 1) * 127.5).round().clip(0, 255).astype(np.uint8)"
        )
    return arr


def iter_batches(images: ImageBatches, batch_size: int = 32) -> Iterator[np.ndarray]:
    """Yield checked uint8 batches of at most ``batch_size`` images."""
    if isinstance(images, np.ndarray):
        arr = check_batch(images)
        for i in range(0, len(arr), batch_size):
            yield arr[i : i + batch_size]
        return
    for batch in images:
        arr = check_batch(batch)
        for i in range(0, len(arr), batch_size):
            yield arr[i : i + batch_size]


def count_images(images: ImageBatches) -> int | None:
    """Number of images when known without consuming the iterable, else None."""
    if isinstance(images, np.ndarray):
        return len(check_batch(images))
    return None


class FeatureExtractor(Protocol):
    """Maps uint8 images ``[B, H, W, 3]`` to features ``[B, dim]`` (float64)."""

    name: str
    dim: int

    def fingerprint(self) -> str: ...

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


def extract_features(
    images: ImageBatches,
    extractor: FeatureExtractor,
    batch_size: int = 32,
    progress: bool = False,
) -> np.ndarray:
    """All features of ``images`` as a float64 array ``[N, dim]``."""
    out = list(_batch_features(images, extractor, batch_size, progress))
    return np.concatenate(out).astype(np.float64)


def _batch_features(
    images: ImageBatches, extractor: FeatureExtractor, batch_size: int, progress: bool
) -> Iterator[np.ndarray]:
    """``extractor`` features batch by batch (a progress bar if asked); an error if empty."""
    n = count_images(images)
    batches = tqdm(
        iter_batches(images, batch_size),
        desc=f"{extractor.name} features",
        unit="batch",
        disable=not progress,
        total=None if n is None else -(-n // batch_size),
    )
    empty = True
    for b in batches:
        empty = False
        yield extractor(b)
    if empty:
        raise MetricsError("no images given: the image set is empty")


class FeatureStats:
    """Streaming float64 statistics of features: count, running sum, running sum of outer products.

    ``mean`` and ``cov`` (unbiased, divisor n - 1) are exact for any split into batches, so
    statistics of several shards can be merged by adding them.
    """

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.n = 0
        self.sum = np.zeros(dim, np.float64)
        self.sum_outer = np.zeros((dim, dim), np.float64)

    def update(self, feats: np.ndarray) -> FeatureStats:
        f = np.asarray(feats, np.float64)
        if f.ndim != 2 or f.shape[1] != self.dim:
            raise MetricsError(f"features must be [N, {self.dim}], got {f.shape}")
        self.n += len(f)
        self.sum += f.sum(0)
        self.sum_outer += f.T @ f
        return self

    def merge(self, other: FeatureStats) -> FeatureStats:
        if other.dim != self.dim:
            raise MetricsError(f"cannot merge statistics of dims {self.dim} and {other.dim}")
        self.n += other.n
        self.sum += other.sum
        self.sum_outer += other.sum_outer
        return self

    @property
    def mean(self) -> np.ndarray:
        self._need(1)
        return self.sum / self.n

    @property
    def cov(self) -> np.ndarray:
        self._need(2)
        mu = self.mean
        return (self.sum_outer - self.n * np.outer(mu, mu)) / (self.n - 1)

    def _need(self, k: int) -> None:
        if self.n < k:
            raise MetricsError(f"statistics need at least {k} images, have {self.n}")

    @classmethod
    def from_features(cls, feats: np.ndarray) -> FeatureStats:
        f = np.asarray(feats, np.float64)
        return cls(f.shape[1]).update(f)

    def save(self, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
        """Write atomically as safetensors (float64 tensors ``n``, ``sum``, ``sum_outer``)."""
        from safetensors.numpy import save_file

        path = Path(path)
        tensors = {
            "n": np.array([self.n], np.int64),
            "sum": self.sum,
            "sum_outer": self.sum_outer,
        }
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=metadata or {})
        return path

    @classmethod
    def load(cls, path: str | Path) -> FeatureStats:
        from safetensors.numpy import load_file

        t = load_file(str(path))
        stats = cls(int(t["sum"].shape[0]))
        stats.n = int(t["n"][0])
        stats.sum = t["sum"].astype(np.float64)
        stats.sum_outer = t["sum_outer"].astype(np.float64)
        return stats


def compute_stats(
    images: ImageBatches,
    extractor: FeatureExtractor,
    batch_size: int = 32,
    progress: bool = False,
) -> FeatureStats:
    """Streaming statistics of ``extractor`` features over ``images`` (never holds all features)."""
    stats = FeatureStats(extractor.dim)
    for features in _batch_features(images, extractor, batch_size, progress):
        stats.update(features)
    return stats


def to_float_nchw(batch: np.ndarray) -> Any:
    """uint8 ``[B, H, W, 3]`` -> torch float32 ``[B, 3, H, W]`` with values 0..255."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float()
