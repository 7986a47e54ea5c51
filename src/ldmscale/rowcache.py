"""Per-image metric rows of sweep cells, kept on disk so that a larger cell reuses the images a
smaller one already sampled and scored.

Image ``i`` of every cell is prompt ``i`` with seed ``seed0 + i`` (:mod:`ldmscale.sweep`), so the
cell of ``N`` images of one (model, sampler, steps, guidance, timestep spacing, metric protocol,
seed set) is the cell of ``n < N`` images plus ``N - n`` more. Per such *family* the cache keeps each scored image's seed,
prompt hash and metric rows (a feature vector for the Fréchet metrics and KID, one number for
alignment and CLIP score); evaluating a cell samples only the images past the longest cached
prefix whose prompts and seeds match. The adaptive guidance search (:mod:`ldmscale.adaptive`)
relies on it: its rounds grow the image count of the surviving scales.

A reused image equals a freshly sampled one to float tolerance (about 1e-5: the batch it was
sampled in changes the last bits), not bit for bit.

Files: ``<dir>/<family>.npz``, written atomically. An unreadable or inconsistent file is
ignored with a warning (its images are sampled again and the file replaced): it is a cache.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ldmscale.io import atomic_write_bytes, hash_json

FORMAT = 1


@dataclass
class CachedRows:
    """Rows of the first ``len(seeds)`` images of a family.

    seeds: int64 ``[n]``; prompt_keys: ``[n]`` short hashes of the prompts; rows: metric name
    -> array with ``n`` rows; meta: what else a cell result needs without sampling (JSON-able).
    """

    seeds: np.ndarray
    prompt_keys: np.ndarray
    rows: dict[str, np.ndarray]
    meta: dict[str, Any]

    def __len__(self) -> int:
        return len(self.seeds)


def family_key(
    model_hash: str, sampler_config: dict[str, Any], protocol: dict[str, Any], seed0: int = 0
) -> str:
    """The cache key of a cell without its image count: what every image's rows depend on.

    ``sampler_config`` is the cell's sampler identity (``ldmscale.sweep.sampler_identity``:
    name, steps, guidance, and the timestep spacing unless ``leading``); ``seed0`` the first
    seed of its seed set. The bootstrap settings are left out (they change the CIs, not the
    rows). ``seed0`` enters the key only when it is not 0, so caches written before seed sets
    were keyed stay valid, while a fresh seed set (``seed0 = 10000``) gets its own file instead
    of replacing the rows of seed set 0.
    """
    rows_protocol = {k: v for k, v in protocol.items() if k not in ("bootstrap", "ci_level")}
    key: dict[str, Any] = {
        "model_hash": model_hash,
        "sampler": sampler_config,
        "protocol": rows_protocol,
    }
    if int(seed0) != 0:
        key["seed0"] = int(seed0)
    return hash_json(key, length=24)


def prompt_keys(prompts: Sequence[str]) -> np.ndarray:
    """A 16-hex-digit sha256 per prompt (what the cache compares prompts by)."""
    return np.array([hashlib.sha256(p.encode("utf-8")).hexdigest()[:16] for p in prompts])


def _path(directory: str | Path, family: str) -> Path:
    return Path(directory) / f"{family}.npz"


def load_rows(directory: str | Path, family: str) -> CachedRows | None:
    """The cached rows of ``family``, or None when there are none (or the file is unreadable)."""
    path = _path(directory, family)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            seeds = z["seeds"].astype(np.int64)
            keys = z["prompt_keys"].astype(str)
            rows = {name: z[f"rows__{name}"] for name in meta["metrics"]}
        if meta.get("format") != FORMAT or any(len(r) != len(seeds) for r in rows.values()):
            raise ValueError("inconsistent lengths or unknown format")
        if len(keys) != len(seeds):
            raise ValueError("inconsistent lengths")
    except Exception as e:  # a cache: any damage means "sample again", never a failed sweep
        warnings.warn(
            f"ignoring unreadable row cache {path} ({e}); its images are sampled again",
            stacklevel=2,
        )
        return None
    return CachedRows(seeds, keys, rows, meta)


def save_rows(directory: str | Path, family: str, cached: CachedRows) -> Path:
    """Write ``cached`` for ``family`` atomically (replacing any older file)."""
    meta = {**cached.meta, "format": FORMAT, "metrics": sorted(cached.rows)}
    buf = io.BytesIO()
    np.savez(
        buf,
        meta=np.array(json.dumps(meta, sort_keys=True)),
        seeds=np.asarray(cached.seeds, np.int64),
        prompt_keys=np.asarray(cached.prompt_keys, dtype="U16"),
        **{f"rows__{k}": np.asarray(v) for k, v in cached.rows.items()},
    )
    return atomic_write_bytes(_path(directory, family), buf.getvalue())


def reusable(cached: CachedRows | None, prompts: Sequence[str], seeds: Sequence[int]) -> int:
    """How many leading images of a cell (``prompts[i]`` with ``seeds[i]``) the cache holds."""
    if cached is None:
        return 0
    n = min(len(cached), len(seeds))
    if n == 0:
        return 0
    same = (cached.seeds[:n] == np.asarray(seeds[:n], np.int64)) & (
        cached.prompt_keys[:n] == prompt_keys(prompts[:n])
    )
    return n if same.all() else int(np.argmin(same))


def extend(cached: CachedRows | None, m: int, new: CachedRows) -> CachedRows:
    """The first ``m`` cached images followed by ``new`` (meta from ``new``)."""
    if cached is None or m == 0:
        return new
    return CachedRows(
        np.concatenate([cached.seeds[:m], new.seeds]),
        np.concatenate([cached.prompt_keys[:m], new.prompt_keys]),
        {k: np.concatenate([cached.rows[k][:m], v]) for k, v in new.rows.items()},
        new.meta,
    )
