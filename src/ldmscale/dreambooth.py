"""DreamBooth fine-tuning of a trained model (``ldmscale dreambooth``): the recipe around the
``dreambooth`` objective (:mod:`ldmscale.objectives.dreambooth`).

1. **Checks**, before any work: the subject folder holds >= 2 images (3-8 recommended) with
   captions (its ``metadata.jsonl``, ``{identifier}`` replaced) or an ``instance_prompt``; a
   class prompt is given; the identifier is *rare*: none of its text-encoder tokens occurs in
   the parent's training captions.
2. **Instance data**: the subject images with their identifier captions, written as a dataset
   folder ``<out>/instance``.
3. **Prior images**: ``prior_images`` class images drawn by the parent itself from the class
   prompts (cycled), before training, saved losslessly (PNG) as the dataset folder
   ``<out>/prior`` with ``prior.json`` (reused on a rerun; the JPEG of diffusers' script is
   avoided).
4. **Fine-tune** through the one trainer (``init_from`` = the parent, run folder ``<out>``):
   a rerun resumes from the last checkpoint. Recipe defaults follow diffusers' DreamBooth,
   scaled to ldmscale's small models: constant LR after a short warm-up, no caption dropout,
   **EMA off** (a 0.9999 EMA lags a 300-step run by most of it), instance batch 4 + prior
   batch 4, ``prior_weight`` 1. DreamBooth's LR window is narrow (too high overfits to the
   training images within a few hundred steps, too low learns nothing): the default was
   calibrated on the tiny study's widths (docs/dreambooth.md).

The result is an ordinary model folder ``<out>/model`` (its ``parent`` records the parent).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ldmscale.config import Config, ConfigError
from ldmscale.data.subject import PLACEHOLDER
from ldmscale.io import atomic_path, atomic_write_json, hash_json

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
PRIOR_FILE = "prior.json"


class DreamBoothError(ConfigError):
    """A DreamBooth request that cannot run; the message names the fix."""


@dataclass
class DreamBoothConfig(Config):
    """One DreamBooth fine-tune (see the module docstring).

    model: the parent model folder. subject: the subject folder. identifier: the rare token
    naming the subject (e.g. "sks"). class_prompts: prompts of the subject's class (e.g.
    "a large purple circle at the top left"), cycled for the prior images. instance_prompt:
    the caption of every subject image (with ``{identifier}``) when the folder has none.
    train_data: the parent's training dataset folder, for the rarity check (default: the
    parent's ``train_config.data``). prior_images: class images (0 = no prior preservation,
    the ablation); prior_weight, prior_batch: the prior term's weight and rows per step.
    prior_sampler: a :class:`~ldmscale.sampling.SamplerConfig` table for the prior images.
    """

    model: str
    subject: str
    identifier: str
    out: str
    class_prompts: tuple[str, ...] = ()
    instance_prompt: str | None = None
    train_data: str | None = None
    steps: int = 400
    lr: float = 5e-4
    warmup_steps: int = 10
    batch_size: int = 4
    ema_decay: float = 0.0
    caption_dropout: float = 0.0
    prior_images: int = 64
    prior_weight: float = 1.0
    prior_batch: int = 4
    prior_sampler: dict[str, Any] = field(
        default_factory=lambda: {"name": "ddim", "steps": 16, "guidance": 2.0,
                                 "timestep_spacing": "trailing"}
    )  # fmt: skip
    seed: int = 0
    checkpoint_every: int = 50

    def __post_init__(self) -> None:
        if not str(self.identifier).strip() or any(c in self.identifier for c in "{}"):
            raise DreamBoothError(
                f"identifier {self.identifier!r}: give a rare word such as 'sks' (no braces)"
            )
        if not self.class_prompts or not all(str(p).strip() for p in self.class_prompts):
            raise DreamBoothError(
                "no class prompt: give --class-prompt TEXT (the subject's class without the "
                "identifier, e.g. 'a large purple circle at the top left'); prior "
                "preservation draws the class images from it"
            )
        if self.prior_images < 0 or self.prior_batch < 1 or self.prior_weight < 0:
            raise DreamBoothError(
                "prior_images must be >= 0, prior_batch >= 1 and prior_weight >= 0"
            )

    @property
    def with_prior(self) -> bool:
        return self.prior_images > 0 and self.prior_weight > 0


# ----------------------------------------------------------------------------- checks


def read_subject(
    folder: str | Path, identifier: str, instance_prompt: str | None = None
) -> list[tuple[Path, str]]:
    """The subject's image paths and identifier captions; errors name the fix."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DreamBoothError(
            f"subject folder not found: {folder}; give a folder of 3-8 images of the subject "
            "(`ldmscale data subject --out DIR` writes the shapes subject)"
        )
    captions: dict[str, str] = {}
    meta = folder / "metadata.jsonl"
    if meta.is_file():
        for line in meta.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                captions[row["file_name"]] = str(row["text"])
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(images) < 2:
        raise DreamBoothError(
            f"subject folder {folder} holds {len(images)} image(s); DreamBooth needs several "
            "views of the subject (3-8): add images to the folder"
        )
    out = []
    for path in images:
        text = captions.get(path.name, instance_prompt)
        if text is None:
            raise DreamBoothError(
                f"subject image {path.name} has no caption: add it to {meta} or give "
                "--instance-prompt 'a {identifier} <class>'"
            )
        if PLACEHOLDER not in text:
            raise DreamBoothError(
                f"subject caption {text!r} does not contain {PLACEHOLDER}: it must name the "
                "subject by the identifier"
            )
        out.append((path, text.replace(PLACEHOLDER, identifier)))
    return out


def training_captions(model: str | Path, train_data: str | None) -> list[str]:
    """The parent's training captions (train split of ``train_data`` or of the dataset its
    ``ldmscale_model.json`` names)."""
    from ldmscale.data import load_dataset
    from ldmscale.modelfolder import read_model_meta

    if not train_data:
        train_data = read_model_meta(model).train_config.get("data")
    if not train_data or not Path(train_data).exists():
        raise DreamBoothError(
            f"the parent's training data ({train_data!r}) is not found, so the identifier "
            "cannot be checked for rarity: give --train-data DATASET_FOLDER"
        )
    return sorted(set(load_dataset(train_data, split="train", validate=False).captions))


def check_identifier_rare(
    identifier: str, captions: list[str], tokenize: Callable[[str], list[str]]
) -> None:
    """Refuse an identifier any of whose tokens (``tokenize(text) -> list[str]``) occurs in
    a training caption: the model would already mean something by it."""
    tokens = set(tokenize(identifier))
    seen: dict[str, str] = {}
    for caption in captions:
        for tok in set(tokenize(caption)) & tokens:
            seen.setdefault(tok, caption)
    if seen:
        tok, caption = next(iter(sorted(seen.items())))
        raise DreamBoothError(
            f"identifier {identifier!r} is not rare: its token(s) {sorted(seen)} occur in the "
            f"model's training captions (e.g. {caption!r}); choose a word the data never "
            "uses, e.g. 'sks'"
        )


def model_tokenizer(model: str | Path) -> Callable[[str], list[str]]:
    """The parent's tokenizer's ``tokenize`` (its ``tokenizer/`` folder, else its encoder's)."""
    from transformers import AutoTokenizer

    from ldmscale.modelfolder import read_model_meta
    from ldmscale.text import load_text_encoder

    folder = Path(model) / "tokenizer"
    if folder.is_dir():
        return AutoTokenizer.from_pretrained(folder, local_files_only=True).tokenize
    return load_text_encoder(read_model_meta(model).text_encoder).tokenizer.tokenize


def model_resolution(model: str | Path) -> int:
    """The parent's image side in px: its training resolution, else latent size x the VAE's
    downsampling factor."""
    from ldmscale.modelfolder import read_model_meta

    meta = read_model_meta(model)
    if "resolution" in meta.train_config:
        return int(meta.train_config["resolution"])
    vae = json.loads((Path(model) / "vae" / "config.json").read_text())
    return meta.unet_spec.latent_size * 2 ** (len(vae["block_out_channels"]) - 1)


# ----------------------------------------------------------------------------- data


def _write_folder(root: Path, rows: list[tuple[Any, str]], key: dict[str, Any]) -> Path:
    """A dataset folder ``root/train`` of ``(PIL image or path, caption)`` rows, kept when
    its ``key.json`` matches ``key``."""
    from PIL import Image

    marker = root / "key.json"
    if marker.is_file() and json.loads(marker.read_text()) == key:
        return root
    with atomic_path(root) as tmp:
        (tmp / "train").mkdir(parents=True)
        lines = []
        for i, (image, caption) in enumerate(rows):
            img = Image.open(image).convert("RGB") if isinstance(image, Path) else image
            name = f"{i:05d}.png"
            img.save(tmp / "train" / name, format="PNG")
            lines.append(json.dumps({"file_name": name, "text": caption}) + "\n")
        (tmp / "train" / "metadata.jsonl").write_text("".join(lines))
        (tmp / "key.json").write_text(json.dumps(key, sort_keys=True))
    return root


def write_prior(cfg: DreamBoothConfig, progress: bool = True) -> Path:
    """The class images of ``cfg`` (drawn by the parent, cached in ``<out>/prior``)."""
    from PIL import Image

    from ldmscale.model import load_model
    from ldmscale.modelfolder import model_hash
    from ldmscale.sampling import SamplerConfig, generate

    root = Path(cfg.out) / "prior"
    sampler = SamplerConfig.from_dict(cfg.prior_sampler)
    key = {
        "parent": model_hash(cfg.model), "prompts": list(cfg.class_prompts),
        "n": cfg.prior_images, "sampler": sampler.to_dict(), "seed": cfg.seed,
    }  # fmt: skip
    if (root / "key.json").is_file() and json.loads((root / "key.json").read_text()) == key:
        return root
    prompts = [cfg.class_prompts[i % len(cfg.class_prompts)] for i in range(cfg.prior_images)]
    seeds = [10_000 * (cfg.seed + 1) + i for i in range(cfg.prior_images)]
    result = generate(load_model(cfg.model), prompts, seeds, sampler, progress=progress)
    rows = [(Image.fromarray(im), p) for im, p in zip(result.images, prompts, strict=True)]
    return _write_folder(root, rows, key)


def train_config(cfg: DreamBoothConfig, instance: Path, prior: Path | None):
    """The :class:`~ldmscale.train.TrainConfig` of the fine-tune."""
    from ldmscale.modelfolder import read_model_meta
    from ldmscale.train import TrainConfig

    meta = read_model_meta(cfg.model)
    spec = meta.unet_spec
    parent_cfg = meta.train_config
    return TrainConfig(
        run_dir=str(cfg.out), c=spec.c, layers_per_block=spec.layers_per_block,
        heads=spec.heads, head_dim=spec.head_dim, objective="dreambooth",
        objective_options={
            "prior": str(prior) if prior else "", "prior_weight": cfg.prior_weight,
            "prior_batch": cfg.prior_batch,
        },
        init_from=str(cfg.model), data=str(instance), resolution=model_resolution(cfg.model),
        vae=str(Path(cfg.model) / "vae"), text_encoder=meta.text_encoder.to_dict(),
        cache_dir=str(Path(cfg.out) / "cache"), steps=cfg.steps, batch_size=cfg.batch_size,
        lr=cfg.lr, warmup_steps=cfg.warmup_steps, ema_decay=cfg.ema_decay,
        caption_dropout=cfg.caption_dropout, prediction_type=meta.prediction_type,
        min_snr_gamma=float(parent_cfg.get("min_snr_gamma", 0.0)), seed=cfg.seed,
        checkpoint_every=cfg.checkpoint_every, keep_last=1, log_every=10,
    )  # fmt: skip


def dreambooth(cfg: DreamBoothConfig, progress: bool = True, on_step=None) -> Path:
    """Run (or resume) the DreamBooth fine-tune ``cfg``; returns the model folder.
    ``on_step(step)``: called after every optimisation step (the trainer's hook)."""
    from ldmscale.surgery import model_unet_dir
    from ldmscale.train import train

    model_unet_dir(cfg.model, "dreambooth --model")
    subject = read_subject(cfg.subject, cfg.identifier, cfg.instance_prompt)
    captions = training_captions(cfg.model, cfg.train_data)
    check_identifier_rare(cfg.identifier, captions, model_tokenizer(cfg.model))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    instance = _write_folder(
        out / "instance", list(subject),
        {"files": [hash_json([p.name, p.stat().st_size, c]) for p, c in subject]},
    )  # fmt: skip
    prior = write_prior(cfg, progress) if cfg.with_prior else None
    atomic_write_json(out / "dreambooth.json", cfg.to_dict())
    train(train_config(cfg, instance, prior), progress=progress, on_step=on_step)
    return out / "model"
