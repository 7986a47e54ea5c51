"""Reference statistics of a dataset split, cached on disk.

The cache file is safetensors (float64 ``n``, ``sum``, ``sum_outer``, and optionally the
float32 per-image ``features`` that KID needs), written atomically. Its name is a hash of the
key ``{dataset fingerprint, split, resolution, count, feature network fingerprint (weights
hash + resize mode + input size)}``; the key is also stored in the file's metadata and
checked on load. The default cache folder is ``$LDMSCALE_CACHE/ref_stats`` (``LDMSCALE_CACHE``
defaults to ``~/.cache/ldmscale``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ldmscale.io import atomic_path, hash_json
from ldmscale.metrics.common import FeatureExtractor, FeatureStats, MetricsError, iter_batches


def default_cache_dir() -> Path:
    """``$LDMSCALE_CACHE`` (default ``~/.cache/ldmscale``)."""
    return Path(os.environ.get("LDMSCALE_CACHE", "~/.cache/ldmscale")).expanduser()


@dataclass
class ReferenceSet:
    """Statistics (and optionally per-image features ``[N, D]`` float32) of reference images."""

    stats: FeatureStats
    features: np.ndarray | None
    key: dict[str, Any]
    path: Path | None = None


def _save(path: Path, ref: ReferenceSet) -> None:
    from safetensors.numpy import save_file

    tensors = {
        "n": np.array([ref.stats.n], np.int64),
        "sum": ref.stats.sum,
        "sum_outer": ref.stats.sum_outer,
    }
    if ref.features is not None:
        tensors["features"] = np.ascontiguousarray(ref.features, np.float32)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"key": json.dumps(ref.key, sort_keys=True)})


def _load(path: Path, key: dict[str, Any]) -> ReferenceSet | None:
    from safetensors import safe_open
    from safetensors.numpy import load_file

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
        if json.loads(meta.get("key", "null")) != json.loads(json.dumps(key, sort_keys=True)):
            return None
        t = load_file(str(path))
    except Exception:  # a damaged cache file is recomputed, never trusted
        return None
    stats = FeatureStats(int(t["sum"].shape[0]))
    stats.n, stats.sum, stats.sum_outer = int(t["n"][0]), t["sum"], t["sum_outer"]
    return ReferenceSet(stats, t.get("features"), key, path)


def cached_reference(
    images: Any,
    key: dict[str, Any],
    extractor: FeatureExtractor,
    cache_dir: str | Path | None = None,
    keep_features: bool = False,
    batch_size: int = 32,
    progress: bool = True,
) -> ReferenceSet:
    """Statistics of ``images`` under cache ``key`` (extended with the extractor's fingerprint).

    ``images`` is uint8 ``[N, H, W, 3]``, an iterable of batches, or a zero-argument callable
    returning either (called only on a cache miss).
    """
    from tqdm import tqdm

    key = {**key, "features": extractor.fingerprint()}
    path = (
        Path(cache_dir or default_cache_dir() / "ref_stats")
        / f"{extractor.name}-{hash_json(key)}.safetensors"
    )
    if path.is_file():
        ref = _load(path, key)
        if ref is not None and (ref.features is not None or not keep_features):
            return ref
    src = images() if callable(images) else images
    stats = FeatureStats(extractor.dim)
    kept: list[np.ndarray] = []
    for b in tqdm(
        iter_batches(src, batch_size),
        desc=f"reference {extractor.name}",
        unit="batch",
        disable=not progress,
    ):
        f = extractor(b)
        stats.update(f)
        if keep_features:
            kept.append(f.astype(np.float32))
    if stats.n == 0:
        raise MetricsError("the reference image set is empty")
    if "count" in key and key["count"] != stats.n:
        raise MetricsError(f"reference key says {key['count']} images, got {stats.n}")
    ref = ReferenceSet(stats, np.concatenate(kept) if keep_features else None, key, path)
    _save(path, ref)
    return ref


def reference_stats(
    source: str | Path,
    extractor: FeatureExtractor,
    split: str = "validation",
    resolution: int = 32,
    max_images: int | None = None,
    cache_dir: str | Path | None = None,
    keep_features: bool = False,
    batch_size: int = 32,
    progress: bool = True,
) -> ReferenceSet:
    """Cached reference statistics of the first ``max_images`` images of a dataset split.

    ``source`` is anything :func:`ldmscale.data.load_dataset` reads (shapes/imagefolder folder,
    COCO root). Images are compared at ``resolution`` (the dataset loader's resize) and then
    go through the extractor's own preprocessing.
    """
    from ldmscale.data import load_dataset

    # validate=False: files are hashed (for the fingerprint) but decoded only on a cache miss.
    ds = load_dataset(source, split=split, resolution=resolution, validate=False)
    n = len(ds) if max_images is None else min(max_images, len(ds))
    key = {
        "dataset": ds.fingerprint(),
        "split": ds.split,
        "resolution": resolution,
        "count": n,
    }

    def images() -> Any:
        for i in range(0, n, batch_size):
            yield ds.images_uint8(list(range(i, min(i + batch_size, n))))

    return cached_reference(images, key, extractor, cache_dir, keep_features, batch_size, progress)
