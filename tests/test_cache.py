"""Latent and embedding caches: contents, keys, hits, and prepare_conditioning."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from ldmscale import cache
from ldmscale.autoencoder import AutoencoderConfig, build_autoencoder
from ldmscale.cache import (
    CacheError,
    build_embedding_cache,
    build_latent_cache,
    load_embedding_cache,
    load_latent_cache,
    prepare_conditioning,
)
from ldmscale.data import load_dataset
from ldmscale.text import TextEncoderSpec, load_text_encoder

AE = AutoencoderConfig(resolution=16, block_out_channels=(8, 8), norm_num_groups=8)


@pytest.fixture(scope="module")
def train_ds(tiny_shapes):
    return load_dataset(tiny_shapes, split="train", resolution=16)


@pytest.fixture(scope="module")
def vae():
    v = build_autoencoder(AE).eval()
    v.register_to_config(scaling_factor=0.5)
    return v


@pytest.fixture(scope="module")
def clip(tiny_clip_dir):
    return load_text_encoder(TextEncoderSpec(kind="clip", path=str(tiny_clip_dir), max_length=8))


def test_latent_cache_contents_and_hit(train_ds, vae, tmp_path, monkeypatch):
    path = build_latent_cache(train_ds, vae, tmp_path, progress=False)
    lat = load_latent_cache(path)
    assert lat.latent_mean.shape == (len(train_ds), 4, 8, 8) == lat.latent_std.shape
    assert lat.latent_mean.dtype == torch.float32 and (lat.latent_std > 0).all()
    assert lat.scaling_factor == 0.5
    with torch.no_grad():  # row i = record i
        d = vae.encode(train_ds[5].image[None]).latent_dist
    assert torch.allclose(lat.latent_mean[5], d.mean[0], atol=1e-5)
    assert torch.allclose(lat.latent_std[5], d.std[0], atol=1e-5)

    # Second call: a hit, nothing is encoded.
    monkeypatch.setattr(vae, "encode", lambda *a, **k: pytest.fail("cache miss on a hit"))
    assert build_latent_cache(train_ds, vae, tmp_path, progress=False) == path
    assert len(list(tmp_path.iterdir())) == 1  # no leftover temporaries


def test_latent_cache_key_follows_data_and_vae(train_ds, tiny_shapes, vae, tmp_path):
    base = cache.latent_cache_path(train_ds, vae, tmp_path)
    val = load_dataset(tiny_shapes, split="validation", resolution=16)
    assert cache.latent_cache_path(val, vae, tmp_path) != base
    other = build_autoencoder(AE.replace(seed=1))
    other.register_to_config(scaling_factor=0.5)
    assert cache.latent_cache_path(train_ds, other, tmp_path) != base
    same = build_autoencoder(AE)  # same seed, same weights: same key
    same.register_to_config(scaling_factor=0.5)
    assert cache.latent_cache_path(train_ds, same, tmp_path) == base
    same.register_to_config(scaling_factor=0.25)  # scale is stored in the cache: part of the key
    assert cache.latent_cache_path(train_ds, same, tmp_path) != base


def test_embedding_cache_contents_and_keys(train_ds, clip, tmp_path, monkeypatch):
    captions = train_ds.captions
    path = build_embedding_cache(captions, clip, tmp_path, progress=False)
    emb = load_embedding_cache(path)
    assert emb.embeddings.shape == (len(captions), 8, 32)
    assert emb.null_embedding.shape == (1, 8, 32)
    assert torch.allclose(emb.null_embedding, clip.encode([""]))
    assert torch.allclose(emb.embeddings[3], clip.encode([captions[3]])[0], atol=1e-5)
    with safe_open(str(path), framework="pt") as f:
        assert '"max_length": 8' in f.metadata()["encoder_spec"]

    monkeypatch.setattr(clip, "encode", lambda *a, **k: pytest.fail("cache miss on a hit"))
    assert build_embedding_cache(captions, clip, tmp_path, progress=False) == path
    assert cache.embedding_cache_path(captions[:-1], clip, tmp_path) != path
    assert cache.embedding_cache_path([*captions[:-1], "x"], clip, tmp_path) != path
    longer = TextEncoderSpec(kind="clip", path=clip.spec.path, max_length=9)
    from ldmscale.text import text_encoder_fingerprint

    assert cache.embedding_cache_path(captions, text_encoder_fingerprint(longer), tmp_path) != path


def test_embedding_cache_encodes_each_distinct_caption_once(clip, tmp_path, monkeypatch):
    captions = ["a red circle", "a blue square", "a red circle", "a red circle", "a blue square"]
    seen: list[list[str]] = []
    encode = clip.encode

    def counting(texts, *a, **k):
        seen.append(list(texts))
        return encode(texts, *a, **k)

    monkeypatch.setattr(clip, "encode", counting)
    emb = load_embedding_cache(build_embedding_cache(captions, clip, tmp_path, progress=False))
    assert seen[0] == ["a red circle", "a blue square"]  # distinct, in first-seen order
    assert emb.embeddings.shape[0] == len(captions)
    for i, c in enumerate(captions):  # every row holds its own caption's embedding
        assert torch.allclose(emb.embeddings[i], encode([c])[0], atol=1e-5)
    assert not torch.allclose(emb.embeddings[0], emb.embeddings[1])


def test_prepare_conditioning_reuses_caches(train_ds, vae, tiny_clip_dir, tmp_path, monkeypatch):
    vae.save_pretrained(tmp_path / "vae")
    spec = TextEncoderSpec(kind="clip", path=str(tiny_clip_dir), max_length=8)
    p = prepare_conditioning(train_ds, tmp_path / "vae", spec, tmp_path / "cache", progress=False)
    assert p.latent_shape == (4, 8, 8) and (p.context_len, p.context_dim) == (8, 32)
    assert p.count == len(train_ds) and p.scaling_factor == 0.5
    assert p.latents_path.is_file() and p.embeddings_path.is_file()
    # A second run (another model width, say) loads no text encoder and encodes nothing.
    monkeypatch.setattr(cache, "load_text_encoder", lambda *a: pytest.fail("encoder loaded"))
    q = prepare_conditioning(train_ds, tmp_path / "vae", spec, tmp_path / "cache", progress=False)
    assert (q.latents_path, q.embeddings_path) == (p.latents_path, p.embeddings_path)
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_bad_cache_files(tmp_path):
    with pytest.raises(CacheError, match="not found"):
        load_latent_cache(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(CacheError, match="rebuild"):
        load_embedding_cache(bad)


def test_load_conditioning_checks_both_caches(tmp_path):
    from safetensors.torch import save_file

    from ldmscale.cache import load_conditioning, resolve_cache_paths
    from ldmscale.config import ConfigError

    lat, emb = tmp_path / "lat.safetensors", tmp_path / "emb.safetensors"
    moments = {"latent_mean": torch.ones(3, 4, 8, 8), "latent_std": torch.zeros(3, 4, 8, 8)}
    save_file(moments, str(lat), metadata={"scaling_factor": "0.5"})
    save_file({"embeddings": torch.ones(3, 6, 16), "null_embedding": torch.zeros(1, 6, 16)},
              str(emb), metadata={"encoder_spec": '{"kind": "minilm", "max_length": 6}'})  # fmt: skip
    cond = load_conditioning(lat, emb)
    assert cond.n == 3 and cond.scaling_factor == 0.5 and cond.text_encoder["max_length"] == 6
    assert set(cond.rows) == {"latent_mean", "latent_std", "embeddings"}
    save_file({"embeddings": torch.ones(2, 6, 16), "null_embedding": torch.zeros(1, 6, 16)},
              str(emb))  # fmt: skip
    with pytest.raises(CacheError, match=r"3 rows but embedding cache .* has 2"):
        load_conditioning(lat, emb)
    save_file(moments, str(lat))
    with pytest.raises(CacheError, match="scaling_factor"):
        load_conditioning(lat, emb)
    kw = dict(data=None, vae=None, text_encoder=None, resolution=16, cache_dir=tmp_path)
    assert resolve_cache_paths(latents=str(lat), embeddings=str(emb), **kw) == (lat, emb)
    with pytest.raises(ConfigError, match="both 'latents' and 'embeddings'"):
        resolve_cache_paths(latents=str(lat), embeddings=None, **kw)
    with pytest.raises(ConfigError, match="no training data"):
        resolve_cache_paths(latents=None, embeddings=None, **kw)
