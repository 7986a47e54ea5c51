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


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory: pytest.TempPathFactory):
    """A trained ``tiny``-preset study folder with its c = 16 width: ``data/shapes``,
    ``autoencoder``, ``runs/c16/model`` (the preset's recipe, so the model draws its captions:
    text alignment ~0.6). The parent of the learning tests that need a model that draws
    (DreamBooth, distillation). Training it takes ~5 minutes on one thread, once per session;
    ``LDMSCALE_TINY_STUDY`` may name a finished ``ldmscale study --preset tiny`` folder instead.
    """
    from pathlib import Path

    given = os.environ.get("LDMSCALE_TINY_STUDY")
    if given:
        if not (Path(given) / "runs" / "c16" / "model").is_dir():
            pytest.fail(f"LDMSCALE_TINY_STUDY={given} has no runs/c16/model")
        return Path(given)
    from ldmscale.study import preset, run_study

    out = tmp_path_factory.mktemp("tiny-study")
    cfg = preset("tiny", str(out)).replace(widths=(16,), train_workers=1)
    run_study(cfg, stages=("data", "autoencoder", "train"), progress=False, log=lambda s: None)
    return cfg.root


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
# shared tiny models (used by text, cache, sampling, sweep, metrics tests): one CLIP tokenizer,
# one CLIP text model, one full CLIPModel, one tiny SD pipeline folder, one ldmscale model folder
# ---------------------------------------------------------------------------

#: The tiny SD pipeline's prompt length (tokens) and text-embedding width.
TINY_CTX_LEN = 8
TINY_CTX_DIM = 32


def tiny_clip_tokenizer(max_length: int | None = None):
    """A CLIP tokenizer built offline: every byte character, with and without the word-end
    marker, plus two merges (``red`` is one token); ``<|startoftext|>`` = 0, ``<|endoftext|>``
    = 1 (also pad and unk). ``max_length`` sets ``model_max_length`` (what pipelines pad to)."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in chars + [c + "</w>" for c in chars] + ["re", "red</w>"]:
        vocab.setdefault(token, len(vocab))
    extra = {} if max_length is None else {"model_max_length": max_length}
    return CLIPTokenizer(vocab=vocab, merges=[("r", "e"), ("re", "d</w>")], **extra)


def tiny_clip_text_config(
    vocab_size: int, hidden_size: int = 32, layers: int = 2, max_positions: int = 77
) -> dict:
    """Keyword arguments of a tiny ``CLIPTextConfig`` matching :func:`tiny_clip_tokenizer`."""
    return dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=max_positions,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )


def tiny_clip_text_model(
    tokenizer, hidden_size: int = 32, layers: int = 2, max_positions: int = 77
):
    """A random ``CLIPTextModel`` (eval mode) for ``tokenizer``; seeds nothing itself."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        **tiny_clip_text_config(len(tokenizer), hidden_size, layers, max_positions)
    )
    return CLIPTextModel(config).eval()


def save_tiny_clip(folder, hidden_size: int = 32, layers: int = 2, seed: int = 0):
    """Write a tiny random CLIP text model + :func:`tiny_clip_tokenizer` to ``folder``."""
    import torch

    tokenizer = tiny_clip_tokenizer()
    torch.manual_seed(seed)
    tiny_clip_text_model(tokenizer, hidden_size, layers).save_pretrained(
        folder, safe_serialization=True
    )
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory):
    """A tiny random local CLIP text-model folder (32-d tokens): ``TextEncoderSpec(kind="clip", path=...)``."""
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny_clip")


@pytest.fixture(scope="session")
def tiny_clip_model_dir(tmp_path_factory: pytest.TempPathFactory):
    """A tiny random full ``CLIPModel`` + ``CLIPProcessor`` folder (for ``clip_score``): 16-d
    text and vision towers, 32 text positions, 32 px images in 8 px patches, 8-d projections."""
    import warnings

    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    folder = tmp_path_factory.mktemp("clip_model") / "tiny_clip_model"
    tokenizer = tiny_clip_tokenizer()
    text = tiny_clip_text_config(len(tokenizer), hidden_size=16, layers=1, max_positions=32)
    vision = dict(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        image_size=32, patch_size=8,
    )  # fmt: skip
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ip = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    model.save_pretrained(folder)
    CLIPProcessor(image_processor=ip, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def tiny_unet_spec(c: int = 8):
    """The tiny SD pipeline's ``UNetSpec``: 8x8x4 latents, 8 tokens of 32-d context."""
    from ldmscale.family import UNetSpec

    return UNetSpec(c=c, context_dim=TINY_CTX_DIM, context_len=TINY_CTX_LEN, latent_size=8)


def surgery_base_spec():
    """The parent spec of the surgery tests: c = 8 on 8x8x4 latents, 6 tokens of 16-d context,
    one layer per block."""
    from ldmscale.family import UNetSpec

    return UNetSpec(
        c=8, context_dim=16, context_len=6, latent_channels=4, latent_size=8, layers_per_block=1
    )


@pytest.fixture(scope="module")
def random_parent_unet():
    """A tiny t2i UNet of :func:`surgery_base_spec` with every weight random (no
    zero-initialised layer hides a mistake in a surgery)."""
    import torch

    from ldmscale.family import build_unet

    torch.manual_seed(0)
    unet = build_unet(surgery_base_spec()).eval()
    with torch.no_grad():
        for p in unet.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return unet


def tiny_sd_components(c: int = 8):
    """(unet, vae, tokenizer, text_model, scheduler) of a tiny Stable Diffusion model, seeded 0.

    UNet of :func:`tiny_unet_spec`, an ``AutoencoderKL`` (8, 16) for 16 px images with a
    scaling factor of 0.5, the tiny CLIP text model (32-d, 8 positions) and SD's DDPM noise
    scheduler. Same ``c`` -> same weights.
    """
    import torch

    from ldmscale.family import build_unet
    from ldmscale.objectives import make_noise_scheduler

    torch.manual_seed(0)
    unet = build_unet(tiny_unet_spec(c))
    vae = tiny_vae(scaling_factor=0.5)
    tokenizer = tiny_clip_tokenizer(TINY_CTX_LEN)
    text_model = tiny_clip_text_model(tokenizer, TINY_CTX_DIM, max_positions=TINY_CTX_LEN)
    return unet, vae, tokenizer, text_model, make_noise_scheduler()


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory: pytest.TempPathFactory):
    """A tiny diffusers ``StableDiffusionPipeline`` folder (:func:`tiny_sd_components`, c=8),
    saved with ``save_pretrained``; its name is ``tiny-sd``. Shared: do not modify it."""
    from diffusers import StableDiffusionPipeline

    unet, vae, tokenizer, text_model, scheduler = tiny_sd_components()
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_model,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    path = tmp_path_factory.mktemp("sd") / "tiny-sd"
    pipe.save_pretrained(path)
    return path


def make_tiny_ldmscale_model(
    root, clip_dir, name: str = "run", c: int = 8, norm_cost: float = 0.001, with_flops: bool = True
):
    """``<root>/<name>/model``: a tiny model folder in the trainer's export format.

    Weights of :func:`tiny_sd_components` (``c`` = 8: the same as ``tiny_sd_dir``), text
    encoder ``{"kind": "clip", "path": clip_dir}`` (e.g. ``tiny_sd_dir``). With
    ``with_flops`` the GFLOPs are recorded (made-up values), else the loader counts them.
    """
    import json
    from pathlib import Path

    unet, vae, _, _, scheduler = tiny_sd_components(c)
    folder = Path(root) / name / "model"
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    scheduler.save_pretrained(folder / "scheduler")
    meta = {
        "format": "ldmscale-model/1",
        "unet_spec": tiny_unet_spec(c).to_dict(),
        "text_encoder": {"kind": "clip", "path": str(clip_dir), "max_length": TINY_CTX_LEN},
        "prediction_type": "epsilon",
        "scaling_factor": 0.5,
        "norm_cost": norm_cost,
        "train_steps": 10,
        "train_config": {},
        "code_version": "test",
    }
    if with_flops:
        meta.update(gflops_xla=0.0075, gflops_dense=0.0079)
    (folder / "ldmscale_model.json").write_text(json.dumps(meta))
    return folder


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


def tiny_vae(**overrides):
    """A randomly initialised AutoencoderKL (8, 16) for 16 px images, shared by the tests."""
    from diffusers import AutoencoderKL

    cfg = dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=16,
    )
    return AutoencoderKL(**{**cfg, **overrides})


# ---------------------------------------------------------------------------
# study (owner: study): the micro study config and a plain (non-shapes) image folder
# ---------------------------------------------------------------------------


def micro_study(out_dir, **changes):
    """A ``StudyConfig`` that runs every stage in about 20 s on one core: 16 px shapes (48 + 16
    images), a 20-step autoencoder, widths 8 and 16 trained 4 steps, a 2 x 2 x 2 grid of 8
    images per cell, FD-probe + alignment. ``changes`` replace top-level fields."""
    from ldmscale.autoencoder import AutoencoderConfig
    from ldmscale.sampling import SamplerConfig
    from ldmscale.study import StudyConfig
    from ldmscale.sweep import SweepConfig
    from ldmscale.text import TextEncoderSpec
    from ldmscale.train import TrainConfig

    cfg = StudyConfig(
        out_dir=str(out_dir),
        preset="micro",
        n_train=48,
        n_val=16,
        resolution=16,
        autoencoder=AutoencoderConfig(
            resolution=16,
            block_out_channels=(8, 16),
            norm_num_groups=8,
            steps=20,
            val_images=16,
            scale_images=32,
        ),
        text_encoder=TextEncoderSpec(kind="minilm", max_length=8),
        widths=(8, 16),
        train=TrainConfig(
            steps=4,
            batch_size=8,
            warmup_steps=1,
            checkpoint_every=2,
            log_every=2,
            layers_per_block=1,
            eval_steps=(2, 4),
        ),
        preview=SamplerConfig(name="ddim", steps=2, guidance=2.0),
        preview_prompts=4,
        sweep=SweepConfig(
            samplers=("ddim", "dpmpp"),
            steps=(1, 2),
            guidance=(1.5, 3.0),
            n_images=8,
            batch_size=8,
            bootstrap=20,
            metrics=("fd_probe", "alignment"),
            probe_steps=20,
        ),
        checkpoint_sampler=SamplerConfig("ddim", 2, 3.0, "trailing"),
        primary_metric="fd_probe",
        paper_table=False,
    )
    return cfg.replace(**changes)


COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 70, 220),
    "gold": (230, 190, 40),
}


def write_plain_folder(root, n_train: int = 32, n_val: int = 16, size: int = 20, seed: int = 0):
    """An image folder without shapes attributes: ``train/`` and ``validation/`` splits of
    ``size`` px RGB images (a colour gradient plus seeded noise) with captions naming the colour
    and the gradient's direction, as ``metadata.jsonl`` (``file_name``, ``text``)."""
    import json
    from pathlib import Path

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = Path(root)
    ramp = np.linspace(0.2, 1.0, size)[:, None, None]
    for split, n in (("train", n_train), ("validation", n_val)):
        folder = root / split
        folder.mkdir(parents=True)
        lines = []
        for i in range(n):
            name, rgb = list(COLOURS.items())[int(rng.integers(len(COLOURS)))]
            vertical = bool(rng.integers(2))
            shade = ramp if vertical else ramp.transpose(1, 0, 2)
            pixels = shade * np.array(rgb) + rng.normal(0, 12, (size, size, 3))
            image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
            image.save(folder / f"{i:03d}.png")
            way = "top to bottom" if vertical else "left to right"
            lines.append(json.dumps({"file_name": f"{i:03d}.png", "text": f"{name} fading {way}"}))
        (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


# ---------------------------------------------------------------------------
# super-resolution (owner: SR): one SR model trained two steps by the one trainer
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sr_run(tmp_path_factory):
    """An SR run trained by the one trainer: 32 px shapes (8 train, 6 validation images), an
    f = 4 autoencoder (8x8 latents = the 8 px LR), two steps, from scratch. Returns (config, run
    folder, dataset folder). Shared: do not modify it."""
    import torch

    from ldmscale.data.shapes import generate_shapes
    from ldmscale.train import TrainConfig, train

    tmp_path = tmp_path_factory.mktemp("sr_run")
    data = generate_shapes(tmp_path / "shapes", n_train=8, n_val=6, resolution=32, seed=0)
    torch.manual_seed(0)
    tiny_vae(
        block_out_channels=(8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        sample_size=32,
    ).save_pretrained(tmp_path / "vae")
    cfg = TrainConfig(
        run_dir=str(tmp_path / "run"),
        c=8,
        layers_per_block=1,
        data=str(data),
        resolution=32,
        vae=str(tmp_path / "vae"),
        text_encoder={"kind": "minilm", "max_length": 8},
        steps=2,
        batch_size=4,
        warmup_steps=1,
        objective="sr",
    )
    return cfg, train(cfg, progress=False), data
