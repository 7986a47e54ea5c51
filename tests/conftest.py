"""Shared pytest fixtures. Each module's fixtures live in their own section below."""

from __future__ import annotations

import os

import pytest

# One intra-op thread for the suite and its subprocesses: the tests run tiny models, for which
# a second thread gains nothing and, on a shared busy CPU, costs 10-100x in contention.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory):
    """Probes and reference statistics go to a fresh cache, not the user's ~/.cache/ldmscale."""
    old = os.environ.get("LDMSCALE_CACHE")
    os.environ["LDMSCALE_CACHE"] = str(tmp_path_factory.mktemp("ldmscale-cache"))
    yield
    if old is None:
        os.environ.pop("LDMSCALE_CACHE", None)
    else:
        os.environ["LDMSCALE_CACHE"] = old


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------
# data (owner: data engineer)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory: pytest.TempPathFactory):
    """A small ``shapes`` dataset folder: 64 train + 16 validation images at 16 px, seed 0.

    Load it with ``ldmscale.data.load_dataset(tiny_shapes, split="train", resolution=16)``.
    Session-scoped and shared: do not modify the folder.
    """
    from ldmscale.data.shapes import generate_shapes

    return generate_shapes(
        tmp_path_factory.mktemp("data") / "tiny_shapes", n_train=64, n_val=16, resolution=16, seed=0
    )


# ---------------------------------------------------------------------------
# autoencoder / text encoders (owner: autoencoder/text engineer)
# ---------------------------------------------------------------------------


def save_tiny_clip(folder, hidden_size: int = 32, layers: int = 2, seed: int = 0):
    """Write a tiny random CLIP text model + CLIP tokenizer (built offline) to ``folder``.

    The tokenizer's vocabulary is every byte character, with and without the word-end
    marker, plus two merges; the model has ``hidden_size``-d tokens. Returns ``folder``.
    """
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in chars + [c + "</w>" for c in chars] + ["re", "red</w>"]:
        vocab.setdefault(token, len(vocab))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[("r", "e"), ("re", "d</w>")])
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    CLIPTextModel(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory):
    """A tiny random local CLIP text-model folder (32-d tokens): ``TextEncoderSpec(kind="clip", path=...)``."""
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny_clip")


# ---------------------------------------------------------------------------
# frontier / report (owner: analysis engineer)
# ---------------------------------------------------------------------------

#: Synthetic study widths: (c, params, norm_cost), paper-like (Table 1 scale).
STUDY_WIDTHS = (
    (64, 38_800_580, 0.07),
    (128, 144_791_940, 0.24),
    (192, 317_974_084, 0.52),
    (320, 865_910_724, 1.0),
)
STUDY_STEPS = {"ddim": (5, 10, 20, 50), "ddpm": (5, 10, 20, 50), "dpmpp": (5, 10, 20)}
STUDY_GUIDANCE = (1.5, 2.0, 3.0, 4.0, 6.0, 8.0)


def make_study_rows(seed: int = 0, with_checkpoints: bool = False) -> list[dict]:
    """Results-store rows (the ``store.rows()`` format) of a synthetic sweep.

    FID-like curves: a floor that falls with width, a 1/steps penalty per sampler
    (DDPM worst, DPM-Solver++ best), a quadratic penalty around a width-dependent
    optimal guidance, bootstrap-like CIs of about +-0.7. Small widths win at small
    sampling cost, large ones at large cost. ``alignment`` (higher is better) too.
    With ``with_checkpoints``, adds checkpoint evaluations carrying ``train_step``.
    """
    import math
    import random

    rng = random.Random(seed)
    penalty = {"ddim": 60.0, "ddpm": 150.0, "dpmpp": 25.0}
    rows = []

    def row(c, params, nc, sampler, steps, w, fid, align, train_step=None):
        half = 0.6 + 0.2 * rng.random()
        r = {
            "cell_id": f"{c}-{sampler}-{steps}-{w}-{train_step}",
            "model": f"shapes-c{c}",
            "model_path": f"/runs/c{c}/model",
            "model_hash": f"hash{c}",
            "c": c,
            "params": params,
            "norm_cost": nc,
            "sampler": sampler,
            "steps": steps,
            "guidance": w,
            "n_images": 500,
            "nfe": steps,
            "sampling_cost": nc * steps,
            "flops": nc * steps * 2 * 789.3e9,
            "metrics": {
                "fid": {"value": fid, "lo": fid - half, "hi": fid + 1.1 * half, "n": 500},
                "alignment": {"value": align, "lo": align - 0.004, "hi": align + 0.004, "n": 500},
            },
            "protocol": {"ci": 0.95, "bootstrap": 200},
            "provenance": {"code_version": "test", "wall_s": 1.0},
        }
        if train_step is not None:
            r["train_step"] = train_step
        return r

    for c, params, nc in STUDY_WIDTHS:
        scale = math.log2(c / 64)
        floor = 14.0 - 2.4 * scale
        w_opt = 2.5 + 0.5 * scale
        for sampler, steps_list in STUDY_STEPS.items():
            for steps in steps_list:
                for w in STUDY_GUIDANCE:
                    fid = floor + penalty[sampler] / steps + 0.8 * (w - w_opt) ** 2
                    fid += rng.gauss(0, 0.15)
                    align = 0.20 + 0.02 * scale + 0.01 * min(w, 5.0) - 0.3 / steps
                    rows.append(row(c, params, nc, sampler, steps, w, fid, align))
        if with_checkpoints:
            for k in (1000, 2000, 4000, 8000):
                fid = floor + 40.0 * (1000 / k) ** 0.7 / (1 + scale) + 60.0 / 50
                rows.append(row(c, params, nc, "ddim", 50, 7.5, fid, 0.2, train_step=k))
    return rows


@pytest.fixture
def study_rows() -> list[dict]:
    """A fresh copy of the synthetic sweep rows (see :func:`make_study_rows`)."""
    return make_study_rows()
