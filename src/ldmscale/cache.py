"""Latent and caption-embedding caches, computed once and keyed by what produced them.

Both caches are safetensors files in ``cache_dir``, named by a hash of their inputs, so every
model and run that needs the same latents (same data, same VAE) or the same embeddings (same
captions, same text encoder) reuses one file; a changed dataset, VAE or encoder gives a new
name. Files are written atomically, so a file that exists is complete.

- ``latents-<data>-<vae>.safetensors``: ``latent_mean``, ``latent_std`` ``[N, C, h, w]`` float32,
  the VAE posterior's moments before scaling; metadata ``scaling_factor`` (a float as str).
  The trainer samples ``z = (mean + std * n) * scaling_factor``.
- ``embeddings-<captions>-<encoder>.safetensors``: ``embeddings`` ``[N, T, D]`` float32 and
  ``null_embedding`` ``[1, T, D]`` (the encoding of "", for classifier-free guidance).

Row ``i`` of both is record ``i`` of the dataset.

The trainer reads them through :func:`resolve_cache_paths` (the files named in its config, or
built here from a dataset folder) and :func:`load_conditioning` (both checked, in memory).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ldmscale.autoencoder import load_autoencoder, vae_fingerprint
from ldmscale.config import ConfigError
from ldmscale.data.dataset import load_dataset, stack_images
from ldmscale.io import atomic_path, hash_json
from ldmscale.text import (
    TextEncoder,
    TextEncoderSpec,
    load_text_encoder,
    text_encoder_fingerprint,
)

KEY_LEN = 16


class CacheError(ValueError):
    """A cache file that cannot be used; the message says how to fix it."""


def latent_cache_path(dataset: Any, vae: Any, cache_dir: str | Path) -> Path:
    """Where the latents of ``dataset`` under ``vae`` live (whether or not built yet)."""
    return Path(cache_dir) / (
        f"latents-{dataset.fingerprint()[:KEY_LEN]}-{vae_fingerprint(vae)[:KEY_LEN]}.safetensors"
    )


def captions_hash(captions: list[str]) -> str:
    return hash_json(list(captions), length=64)


def embedding_cache_path(
    captions: list[str], encoder: TextEncoder | str, cache_dir: str | Path
) -> Path:
    """Where the embeddings of ``captions`` live (whether or not built yet).

    ``encoder`` is a loaded encoder or its fingerprint (``text_encoder_fingerprint(spec)``).
    """
    efp = encoder if isinstance(encoder, str) else encoder.fingerprint()
    return Path(cache_dir) / (
        f"embeddings-{captions_hash(captions)[:KEY_LEN]}-{efp[:KEY_LEN]}.safetensors"
    )


@torch.no_grad()
def build_latent_cache(
    dataset: Any,
    vae: Any,
    cache_dir: str | Path,
    batch_size: int = 64,
    progress: bool = True,
) -> Path:
    """Encode every image of ``dataset`` with ``vae`` once; return the cache file (hit or new)."""
    path = latent_cache_path(dataset, vae, cache_dir)
    if path.is_file():
        return path
    n = len(dataset)
    if n == 0:
        raise CacheError("build_latent_cache: the dataset is empty")
    was_training = vae.training
    vae.eval()
    device = next(vae.parameters()).device
    means, stds = [], []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=stack_images)
    for x in tqdm(loader, total=math.ceil(n / batch_size), desc="latents", disable=not progress):
        dist = vae.encode(x.to(device)).latent_dist
        means.append(dist.mean.float().cpu())
        stds.append(dist.std.float().cpu())
    vae.train(was_training)
    tensors = {
        "latent_mean": torch.cat(means).contiguous(),
        "latent_std": torch.cat(stds).contiguous(),
    }
    metadata = {
        "format": "ldmscale-latents/1",
        "scaling_factor": repr(float(vae.config.scaling_factor)),
        "dataset_fingerprint": dataset.fingerprint(),
        "vae_fingerprint": vae_fingerprint(vae),
        "count": str(n),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


@torch.no_grad()
def build_embedding_cache(
    captions: list[str],
    encoder: TextEncoder,
    cache_dir: str | Path,
    progress: bool = True,
) -> Path:
    """Encode every caption with ``encoder`` once; return the cache file (hit or new).

    Each distinct caption is encoded once and copied to its rows (captions are padded to the
    encoder's fixed length, so a caption's embedding does not depend on its batch): the
    one-object ``shapes`` variant has 192 distinct captions in 20,000 rows.
    """
    captions = list(captions)
    path = embedding_cache_path(captions, encoder, cache_dir)
    if path.is_file():
        return path
    if not captions:
        raise CacheError("build_embedding_cache: no captions")
    distinct = list(dict.fromkeys(captions))
    row_of = {c: i for i, c in enumerate(distinct)}
    index = torch.tensor([row_of[c] for c in captions])
    tensors = {
        "embeddings": encoder.encode(distinct, progress=progress)[index].contiguous(),
        "null_embedding": encoder.encode([""]).contiguous(),
    }
    metadata = {
        "format": "ldmscale-embeddings/1",
        "captions_hash": captions_hash(captions),
        "encoder_fingerprint": encoder.fingerprint(),
        "encoder_spec": encoder.spec.to_json(),
        "count": str(len(captions)),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def _read(
    path: str | Path, names: tuple[str, ...]
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise CacheError(f"cache file not found: {path}; build it with ldmscale.cache")
    try:
        with safe_open(str(path), framework="pt") as f:
            missing = [n for n in names if n not in f.keys()]  # noqa: SIM118
            if missing:
                raise CacheError(f"{path} lacks tensors {missing}; delete it and rebuild the cache")
            return {n: f.get_tensor(n) for n in names}, dict(f.metadata() or {})
    except CacheError:
        raise
    except Exception as e:  # SafetensorError is not an OSError
        raise CacheError(
            f"{path} is not a readable safetensors cache ({e}); delete it and rebuild"
        ) from e


@dataclass
class LatentCache:
    """latent_mean, latent_std: ``[N, C, h, w]`` float32; scaling_factor: multiply z by it."""

    latent_mean: torch.Tensor
    latent_std: torch.Tensor
    scaling_factor: float


def load_latent_cache(path: str | Path) -> LatentCache:
    t, meta = _read(path, ("latent_mean", "latent_std"))
    if "scaling_factor" not in meta:
        raise CacheError(f"{path} has no scaling_factor metadata; delete it and rebuild the cache")
    return LatentCache(t["latent_mean"], t["latent_std"], float(meta["scaling_factor"]))


@dataclass
class EmbeddingCache:
    """embeddings: ``[N, T, D]`` float32; null_embedding: ``[1, T, D]`` (the encoding of "")."""

    embeddings: torch.Tensor
    null_embedding: torch.Tensor


def load_embedding_cache(path: str | Path) -> EmbeddingCache:
    t, _ = _read(path, ("embeddings", "null_embedding"))
    return EmbeddingCache(t["embeddings"], t["null_embedding"])


@dataclass
class Prepared:
    """What the trainer needs, all on disk: the two caches and the shapes they hold.

    latent_shape: ``(C, h, w)``; context_len, context_dim: ``T``, ``D`` of the embeddings.
    """

    latents_path: Path
    embeddings_path: Path
    scaling_factor: float
    latent_shape: tuple[int, int, int]
    context_len: int
    context_dim: int
    count: int
    vae_path: Path
    text_encoder: TextEncoderSpec


def prepare_conditioning(
    dataset: Any,
    vae_path: str | Path,
    text_spec: TextEncoderSpec,
    cache_dir: str | Path,
    progress: bool = True,
) -> Prepared:
    """Load the VAE and text encoder, build (or reuse) both caches for ``dataset``."""
    vae = load_autoencoder(vae_path)
    latents_path = build_latent_cache(dataset, vae, cache_dir, progress=progress)
    del vae
    captions = list(dataset.captions)
    embeddings_path = embedding_cache_path(captions, text_encoder_fingerprint(text_spec), cache_dir)
    if not embeddings_path.is_file():  # load the encoder only on a cache miss
        encoder = load_text_encoder(text_spec)
        embeddings_path = build_embedding_cache(captions, encoder, cache_dir, progress=progress)
    with safe_open(str(latents_path), framework="pt") as f:
        shape = tuple(f.get_slice("latent_mean").get_shape())
        scaling_factor = float((f.metadata() or {})["scaling_factor"])
    with safe_open(str(embeddings_path), framework="pt") as f:
        eshape = tuple(f.get_slice("embeddings").get_shape())
    return Prepared(
        latents_path=latents_path,
        embeddings_path=embeddings_path,
        scaling_factor=scaling_factor,
        latent_shape=(int(shape[1]), int(shape[2]), int(shape[3])),
        context_len=int(eshape[1]),
        context_dim=int(eshape[2]),
        count=int(shape[0]),
        vae_path=Path(vae_path),
        text_encoder=text_spec,
    )


# ----------------------------------------------------------------------------- for the trainer


@dataclass
class Conditioning:
    """The in-memory training data: per-row tensors and the constants the objective needs.

    rows: ``latent_mean``, ``latent_std`` ``[N, C, h, w]`` and ``embeddings`` ``[N, T, D]``,
        float32, row i = record i. null_embedding: ``[1, T, D]``, the encoding of "".
    scaling_factor: multiply posterior samples by it. text_encoder: the encoder's spec as the
        embedding cache records it (None when it does not).
    """

    rows: dict[str, torch.Tensor]
    null_embedding: torch.Tensor
    scaling_factor: float
    text_encoder: dict[str, Any] | None = None

    @property
    def n(self) -> int:
        return next(iter(self.rows.values())).shape[0]


def _read_all(path: Path, what: str, fix: str) -> tuple[dict[str, torch.Tensor], dict]:
    if not path.is_file():
        raise CacheError(f"{what} not found: {path}. {fix}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as e:  # safetensors raises its own error types
        raise CacheError(f"{what} {path} cannot be read ({e}). {fix}") from e
    return tensors, meta


def load_conditioning(latents: str | Path, embeddings: str | Path) -> Conditioning:
    """Read and check the latent cache and the caption-embedding cache (row i = record i)."""
    fix = "Rebuild the caches (ldmscale.cache) or fix the path in the train config."
    lat, lat_meta = _read_all(Path(latents), "latent cache", fix)
    emb, emb_meta = _read_all(Path(embeddings), "embedding cache", fix)
    for key in ("latent_mean", "latent_std"):
        if key not in lat or lat[key].ndim != 4:
            raise CacheError(f"latent cache {latents}: needs a 4-d tensor '{key}' [N,C,h,w]. {fix}")
    if lat["latent_mean"].shape != lat["latent_std"].shape:
        raise CacheError(f"latent cache {latents}: latent_mean and latent_std shapes differ")
    if "scaling_factor" not in lat_meta:
        raise CacheError(f"latent cache {latents}: metadata lacks 'scaling_factor'. {fix}")
    for key, nd in (("embeddings", 3), ("null_embedding", 3)):
        if key not in emb or emb[key].ndim != nd:
            raise CacheError(f"embedding cache {embeddings}: needs a 3-d tensor '{key}'. {fix}")
    n_lat, n_emb = lat["latent_mean"].shape[0], emb["embeddings"].shape[0]
    if n_lat != n_emb:
        raise CacheError(
            f"latent cache {latents} has {n_lat} rows but embedding cache {embeddings} has "
            f"{n_emb}; both must come from the same dataset (row i = record i). {fix}"
        )
    if emb["null_embedding"].shape != (1, *emb["embeddings"].shape[1:]):
        raise CacheError(
            f"embedding cache {embeddings}: null_embedding must be [1,T,D] matching embeddings"
        )
    text_encoder = None
    if "encoder_spec" in emb_meta:  # written by build_embedding_cache
        try:
            text_encoder = json.loads(emb_meta["encoder_spec"])
        except json.JSONDecodeError:
            text_encoder = None
    return Conditioning(
        rows={
            "latent_mean": lat["latent_mean"].float().contiguous(),
            "latent_std": lat["latent_std"].float().contiguous(),
            "embeddings": emb["embeddings"].float().contiguous(),
        },
        null_embedding=emb["null_embedding"].float(),
        scaling_factor=float(lat_meta["scaling_factor"]),
        text_encoder=text_encoder,
    )


def load_hr_images(data: str | Path | None, resolution: int, n_rows: int) -> torch.Tensor:
    """The training split of dataset folder ``data`` at ``resolution`` as uint8 ``[N, H, W, 3]``,
    row i = record i as in the caches: the high-resolution targets an SR objective degrades."""
    if not data:
        raise ConfigError(
            "this objective needs the high-resolution training images (hr_uint8): set "
            "TrainConfig.data to the dataset folder (with vae and text_encoder) instead of "
            "latent/embedding cache files"
        )
    images = load_dataset(data, split="train", resolution=resolution).images_uint8()
    if images.shape[0] != n_rows:
        raise CacheError(
            f"dataset {data} has {images.shape[0]} training images but the caches have {n_rows} "
            "rows; build the caches from this dataset (row i = record i)"
        )
    return torch.from_numpy(images)


def resolve_cache_paths(
    *,
    latents: str | None,
    embeddings: str | None,
    data: str | None,
    vae: str | None,
    text_encoder: dict[str, Any] | None,
    resolution: int,
    cache_dir: str | Path,
    progress: bool = True,
) -> tuple[Path, Path]:
    """The two cache files: given (``latents`` + ``embeddings``), or built (or reused) in
    ``cache_dir`` from the dataset folder ``data`` with ``vae`` and ``text_encoder``
    (``TextEncoderSpec`` fields) at ``resolution``. The arguments are the train config's keys."""
    if latents and embeddings:
        return Path(latents), Path(embeddings)
    if latents or embeddings:
        raise ConfigError(
            "TrainConfig: give both 'latents' and 'embeddings' cache files, or neither "
            "(and then 'data' + 'vae' + 'text_encoder' to build them)"
        )
    if not data:
        raise ConfigError(
            "TrainConfig: no training data; set 'latents' + 'embeddings' (cache files), or "
            "'data' (a dataset folder) + 'vae' + 'text_encoder'"
        )
    if not vae:
        raise ConfigError(
            "TrainConfig: 'data' needs 'vae' (an AutoencoderKL folder) to encode images"
        )
    dataset = load_dataset(data, split="train", resolution=resolution)
    prepared = prepare_conditioning(
        dataset, vae, TextEncoderSpec.from_dict(text_encoder or {}), cache_dir, progress=progress
    )
    return Path(prepared.latents_path), Path(prepared.embeddings_path)
