"""The trained model folder: its typed ``ldmscale_model.json`` and its diffusers pipeline files.

A model folder (``<run>/model/``, or a kept checkpoint ``<run>/evals/step-N/``) holds

- ``unet/`` (the EMA weights), ``vae/``, ``scheduler/``: diffusers ``save_pretrained`` folders;
- ``text_encoder/`` + ``tokenizer/`` + ``model_index.json``: the frozen text encoder and the
  index that make the folder a ``diffusers.StableDiffusionPipeline`` folder, loadable offline
  with ``StableDiffusionPipeline.from_pretrained(folder)`` (:func:`write_pipeline_files`);
- ``ldmscale_model.json``: :class:`ModelMeta`, written last, so its presence marks a finished
  export. Read it only with :func:`read_model_meta`; write it only with :func:`write_model_meta`.

The pipeline reproduces ldmscale's conditioning exactly: captions padded and truncated to the
model's ``max_length`` tokens (``tokenizer/``'s ``model_max_length``), the last hidden state of
the text encoder, and the attention mask passed to MiniLM (``use_attention_mask: true`` in
``text_encoder/config.json``) but not to CLIP, as :class:`ldmscale.text.TextEncoder` does.
``vae/config.json``'s ``scaling_factor`` is the one ``ldmscale_model.json`` records.
"""

from __future__ import annotations

import json
import shutil
import types
import typing
import warnings
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from ldmscale.config import Config, ConfigError, omit_if_default
from ldmscale.family import UNetSpec
from ldmscale.io import atomic_path, atomic_write_json, hash_json, sha256_file
from ldmscale.text import (
    MINILM_SHA256,
    TextEncoderError,
    TextEncoderSpec,
    _clip_folders,
    _minilm_weights,
)

MODEL_FILE = "ldmscale_model.json"
MODEL_FORMAT = "ldmscale-model/1"
PIPELINE_INDEX = "model_index.json"
#: What a model was trained for; recorded so a sampler or a report can tell them apart.
TASKS = ("t2i", "sr", "dreambooth", "distilled")


class ModelLoadError(ValueError):
    """A model folder that cannot be read or loaded; the message names the problem and the fix."""


@dataclass
class ParentModel(Config):
    """The model a fine-tuned or distilled model started from.

    path: its folder, absolute, as it was when training started.
    hash: :func:`model_hash` of that folder (the results store's ``model_hash``).
    """

    path: str
    hash: str


@dataclass
class SRMeta(Config):
    """How a super-resolution model (``task = "sr"``) takes its low-resolution (LR) input.

    scale: HR side / LR side. max_noise_level: the LR noise levels it was trained on are
    ``0 .. max_noise_level - 1``. low_res_schedule: the ``DDPMScheduler`` config of the LR noise
    augmentation. noise_level: the level to sample at (diffusers' upscaler default, 20).
    degradation: the ``DegradeConfig`` (as a dict) its training LR images were made with.
    """

    scale: int
    max_noise_level: int
    low_res_schedule: dict[str, Any]
    noise_level: int = 20
    degradation: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelMeta(Config):
    """The schema of ``ldmscale_model.json``: what a model folder says about its model.

    unet_spec: the UNet's family member (width, context and latent shape).
    text_encoder: the frozen encoder whose token embeddings condition the UNet.
    scaling_factor: latents are ``vae.encode(x) * scaling_factor``; images are
        ``vae.decode(z / scaling_factor)``.
    format: :data:`MODEL_FORMAT`. task: one of :data:`TASKS`. parent: the model this one was
        initialised from (None when trained from scratch).
    prediction_type: what the UNet predicts ("epsilon" or "v_prediction").
    norm_cost: GFLOPs of one forward at batch 1 over those of the same spec at c=320, ``xla``
        convention. gflops_xla, gflops_dense: GFLOPs of one forward at batch 1 in each
        convention (None: counted when loaded).
    train_steps: the run's planned steps; train_step: the step these weights belong to;
        total_steps: ``train_steps`` again (kept for readers of that name); train_compute:
        ``norm_cost x train_step``; images_seen: ``train_step x batch_size``; seed, run: the
        run's seed and folder name. All None in folders written before they were recorded.
    name: a display name overriding the folder-derived one (see :func:`model_name`).
    sampler_hint: how the model is meant to be sampled when its objective says so (e.g.
        ``{"name": "ddim"}``); None for text-to-image.
    sr: :class:`SRMeta` of a super-resolution model; absent otherwise.
    train_config: the ``TrainConfig`` as a dict. code_version: what wrote the folder.

    A later task's settings (super-resolution, guidance embedding, sampler hint) are added
    as optional typed fields, None for text-to-image, so older folders keep loading.
    """

    unet_spec: UNetSpec
    text_encoder: TextEncoderSpec
    scaling_factor: float
    format: str = MODEL_FORMAT
    task: str = "t2i"
    parent: ParentModel | None = None
    prediction_type: str = "epsilon"
    norm_cost: float | None = None
    gflops_xla: float | None = None
    gflops_dense: float | None = None
    train_steps: int | None = None
    train_step: int | None = None
    total_steps: int | None = None
    train_compute: float | None = None
    images_seen: int | None = None
    seed: int | None = None
    run: str | None = None
    name: str | None = None
    sampler_hint: dict[str, Any] | None = None
    sr: SRMeta | None = omit_if_default(None)
    train_config: dict[str, Any] = field(default_factory=dict)
    code_version: str | None = None

    def __post_init__(self) -> None:
        if self.format != MODEL_FORMAT:
            raise ConfigError(f"ModelMeta.format must be {MODEL_FORMAT!r}, got {self.format!r}")
        if self.task not in TASKS:
            raise ConfigError(f"ModelMeta.task must be one of {list(TASKS)}, got {self.task!r}")

    def describe(self) -> dict[str, Any]:
        """The meta as a plain dict without ``train_config``: a model's config in results."""
        return {k: v for k, v in self.to_dict().items() if k != "train_config"}


_REQUIRED = tuple(
    f.name for f in fields(ModelMeta) if f.default is MISSING and f.default_factory is MISSING
)


# ----------------------------------------------------------------------------- read / write


def write_model_meta(folder: str | Path, meta: ModelMeta) -> Path:
    """Write ``<folder>/ldmscale_model.json`` atomically (indented JSON, sorted keys)."""
    return atomic_write_json(Path(folder) / MODEL_FILE, meta.to_dict())


def read_model_meta(folder: str | Path) -> ModelMeta:
    """Read and check ``<folder>/ldmscale_model.json``; a :class:`ModelLoadError` says what is
    wrong (missing file, damaged JSON, another format, an unknown key, a wrong type) and how
    to fix it. Folders written before ``task``/``parent`` existed load with their defaults."""
    path = Path(folder) / MODEL_FILE
    if not path.is_file():
        raise ModelLoadError(
            f"{path} not found: {folder} is not an ldmscale model folder; pass the model/ "
            "folder of a training run (written by `ldmscale train`)"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{path}: not valid JSON ({e}); the file is damaged") from e
    return parse_model_meta(data, str(path))


def parse_model_meta(data: Any, where: str = MODEL_FILE) -> ModelMeta:
    """Check the plain dict ``data`` against :class:`ModelMeta`; ``where`` prefixes errors."""
    if not isinstance(data, dict):
        raise ModelLoadError(f"{where}: expected a JSON object, got {type(data).__name__}")
    fmt = data.get("format")
    if fmt != MODEL_FORMAT:
        raise ModelLoadError(
            f"{where}: format {fmt!r} is not {MODEL_FORMAT!r}; the model was written by another "
            "ldmscale version: re-export it with this one"
        )
    hints = typing.get_type_hints(ModelMeta)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise ModelLoadError(
            f"{where}: unknown key(s) {unknown}; valid keys are {sorted(hints)}. Remove them, "
            "or use the ldmscale version that wrote the folder"
        )
    missing = [k for k in _REQUIRED if data.get(k) is None]
    if missing:
        raise ModelLoadError(
            f"{where}: missing key(s) {missing}; the export is incomplete: re-export the model"
        )
    for key, value in data.items():
        problem = _type_problem(hints[key], value)
        if problem:
            raise ModelLoadError(f"{where}: key {key!r} {problem}; correct it or re-export")
    try:
        return ModelMeta.from_dict(data)
    except (ConfigError, TypeError) as e:
        raise ModelLoadError(f"{where}: {e}; correct the key it names or re-export") from e


def _type_problem(hint: Any, value: Any) -> str | None:
    """Why ``value`` is not of the annotated type ``hint`` (None when it is)."""
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType)
    if value is None:
        return None if optional else "must not be null"
    tp = next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint
    if isinstance(tp, type) and issubclass(tp, Config):
        if not isinstance(value, dict):
            return f"must be an object of {tp.__name__} fields, got {value!r}"
        try:
            tp.from_dict(value)
        except (ConfigError, TypeError) as e:
            return f"is not a valid {tp.__name__}: {e}"
        return None
    expected = {float: (int, float), int: (int,), str: (str,)}.get(tp, (typing.get_origin(tp),))
    if isinstance(value, bool) or not isinstance(value, expected):
        name = {float: "a number", int: "an integer", str: "a string"}.get(tp, "an object")
        return f"must be {name}, got {value!r}"
    return None


# ----------------------------------------------------------------------------- identity


def find_model_folder(path: str | Path) -> tuple[Path, str]:
    """``(folder, kind)`` for a model folder, its run folder (``<run>/model``) or a diffusers
    Stable Diffusion folder; kind is ``"ldmscale"`` or ``"diffusers"``."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(
            f"model folder not found: {path}; pass the `model/` folder of a training run "
            f"(it holds {MODEL_FILE}) or a diffusers Stable Diffusion folder "
            f"(it holds {PIPELINE_INDEX})"
        )
    if not path.is_dir():
        raise ModelLoadError(f"{path} is a file; pass the model folder that contains it")
    if (path / MODEL_FILE).is_file():
        return path, "ldmscale"
    if (path / PIPELINE_INDEX).is_file():
        return path, "diffusers"
    if (path / "model" / MODEL_FILE).is_file():
        return path / "model", "ldmscale"
    raise ModelLoadError(
        f"unknown model format in {path}: not a model folder; expected {MODEL_FILE} (an "
        f"ldmscale model, e.g. <run>/model/) or {PIPELINE_INDEX} (a diffusers Stable "
        "Diffusion folder)"
    )


def model_name(folder: str | Path, meta: ModelMeta) -> str:
    """The model's display name: ``meta.name``; else the run's name for ``<run>/model``; else
    ``<run>/<folder>`` for a kept checkpoint ``<run>/evals/step-N`` (from ``meta.run``)."""
    folder = Path(folder)
    if meta.name:
        return meta.name
    if folder.name == "model":
        return folder.parent.name
    return f"{meta.run}/{folder.name}" if meta.run else folder.name


def hashed_files(folder: str | Path) -> list[Path]:
    """The files :func:`model_hash` covers: ``unet/`` and ``vae/`` weights and configs, and
    ``ldmscale_model.json`` (text encoder, tokenizer and pipeline index are not included)."""
    folder = Path(folder)
    files: list[Path] = []
    for sub in ("unet", "vae"):
        files += sorted(
            p for p in (folder / sub).glob("*") if p.suffix in (".safetensors", ".bin", ".json")
        )
    own = folder / MODEL_FILE
    return files + ([own] if own.is_file() else [])


def model_hash(folder: str | Path) -> str:
    """A model's identity in the results store: sha256 (32 hex digits) over the relative
    names and sha256 digests of :func:`hashed_files`."""
    folder = Path(folder)
    files = hashed_files(folder)
    return hash_json([[str(f.relative_to(folder)), sha256_file(f)] for f in files], length=32)


def parent_of(path: str | Path) -> ParentModel:
    """The :class:`ParentModel` record of the model folder at ``path`` (absolute path, hash)."""
    folder, _ = find_model_folder(path)
    return ParentModel(path=str(folder.resolve()), hash=model_hash(folder))


# ----------------------------------------------------------------------------- writing a folder


def write_model_folder(
    out: str | Path,
    unet: Any,
    vae_dir: str | Path,
    scheduler: Any,
    meta: ModelMeta,
    *,
    pipeline: bool = True,
) -> Path:
    """Write a model folder atomically (a kill leaves the old folder or none): ``unet/``
    (``unet.save_pretrained``), ``vae/`` (copied from ``vae_dir``, or from its ``vae/`` when it
    is a Stable Diffusion folder), ``scheduler/``, with ``pipeline`` the diffusers pipeline
    files (skipped with a warning when the text encoder is not on this machine), and
    ``ldmscale_model.json`` last."""
    out = Path(out)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        vae_dir = Path(vae_dir)
        if not (vae_dir / "config.json").is_file() and (vae_dir / "vae" / "config.json").is_file():
            vae_dir = vae_dir / "vae"  # an SD pipeline folder: take its autoencoder only
        shutil.copytree(vae_dir, tmp / "vae", ignore=shutil.ignore_patterns(".*"))
        scheduler.save_pretrained(tmp / "scheduler")
        if pipeline:
            try:
                write_pipeline_files(tmp, meta)
            except (ModelLoadError, TextEncoderError) as e:
                warnings.warn(
                    f"{out}: diffusers pipeline files not written ({e}); the folder loads in "
                    "ldmscale only. Add them later: ldmscale.modelfolder.write_pipeline_files",
                    stacklevel=2,
                )
        write_model_meta(tmp, meta)
    return out


# ----------------------------------------------------------------------------- diffusers pipeline

#: text encoder kind -> (transformers model class, tokenizer class, attention mask passed?),
#: as ldmscale.text.TextEncoder encodes: MiniLM with its attention mask, CLIP without.
PIPELINE_TEXT_CLASSES: dict[str, tuple[str, str, bool]] = {
    "minilm": ("BertModel", "BertTokenizerFast", True),
    "clip": ("CLIPTextModel", "CLIPTokenizer", False),
}
_TOKENIZER_FILES = (
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
)


def write_pipeline_files(model_dir: str | Path, meta: ModelMeta | None = None) -> Path:
    """Make a model folder a ``diffusers.StableDiffusionPipeline`` folder as well.

    Adds ``text_encoder/`` (a copy of the weights ldmscale loads, 90.9 MB for MiniLM, its
    config with ``use_attention_mask`` set as ldmscale encodes), ``tokenizer/`` (the tokenizer
    files with ``model_max_length`` = the model's ``max_length``; about 0.7 MB) and, last,
    ``model_index.json`` (safety checker and feature extractor null); sets ``vae/config.json``'s
    ``scaling_factor`` to ``meta.scaling_factor`` where they differ. Each part is written
    atomically. ``meta`` defaults to the folder's own ``ldmscale_model.json``; nothing else in
    the folder changes, so what ldmscale loads and samples stays the same.
    """
    model_dir = Path(model_dir)
    meta = read_model_meta(model_dir) if meta is None else meta
    spec = meta.text_encoder
    model_class, tokenizer_class, use_mask = PIPELINE_TEXT_CLASSES[spec.kind]
    model_src, tokenizer_src = _text_encoder_sources(spec)
    with atomic_path(model_dir / "text_encoder") as tmp:
        tmp.mkdir()
        _copy_text_model(model_src, tmp, use_mask)
    with atomic_path(model_dir / "tokenizer") as tmp:
        tmp.mkdir()
        _copy_tokenizer(tokenizer_src, tmp, spec.max_length)
    _match_vae_scaling(model_dir, meta.scaling_factor)
    index = _pipeline_index(model_dir, model_class, tokenizer_class)
    return atomic_write_json(model_dir / PIPELINE_INDEX, index)


def _text_encoder_sources(spec: TextEncoderSpec) -> tuple[Path, Path]:
    """(model folder, tokenizer folder) that ``load_text_encoder(spec)`` reads."""
    if spec.kind == "minilm":
        weights = _minilm_weights(spec)
        digest = sha256_file(weights)
        if digest != MINILM_SHA256:
            raise TextEncoderError(
                f"{weights} has sha256 {digest}, expected {MINILM_SHA256} (all-MiniLM-L6-v2); "
                "reinstall the text encoder package"
            )
        return weights.parent, weights.parent
    root = Path(spec.path)  # type: ignore[arg-type]  # required for clip by TextEncoderSpec
    if not root.is_dir():
        raise TextEncoderError(
            f"CLIP text encoder folder not found: {root}; the text_encoder spec's path must "
            "name the local CLIP text model the model was trained with"
        )
    return _clip_folders(root)


def _copy_text_model(src: Path, dst: Path, use_attention_mask: bool) -> None:
    config_file = src / "config.json"
    if not config_file.is_file():
        raise TextEncoderError(f"{src}: no config.json; not a transformers model folder")
    config = json.loads(config_file.read_text())
    config["use_attention_mask"] = use_attention_mask  # read by diffusers' encode_prompt
    atomic_write_json(dst / "config.json", config)
    index = src / "model.safetensors.index.json"
    if (src / "model.safetensors").is_file():
        weights = [src / "model.safetensors"]
    elif index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        weights = [index] + [src / s for s in shards]
    else:
        raise TextEncoderError(
            f"{src} has no model.safetensors (nor a sharded index); ldmscale loads text "
            "encoders only from safetensors"
        )
    for f in weights:
        shutil.copyfile(f, dst / f.name)


def _copy_tokenizer(src: Path, dst: Path, max_length: int) -> None:
    """The tokenizer files with ``model_max_length`` set: diffusers pads and truncates every
    prompt (and the empty negative prompt) to it, as ldmscale pads to ``max_length``."""
    copied = [name for name in _TOKENIZER_FILES if (src / name).is_file()]
    if not any(name != "tokenizer_config.json" for name in copied):
        raise TextEncoderError(f"{src}: no tokenizer files ({', '.join(_TOKENIZER_FILES[1:])})")
    for name in copied:
        if name != "tokenizer_config.json":
            shutil.copyfile(src / name, dst / name)
    config_file = src / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    config["model_max_length"] = int(max_length)
    atomic_write_json(dst / "tokenizer_config.json", config)


def _match_vae_scaling(model_dir: Path, scaling_factor: float) -> None:
    config_file = model_dir / "vae" / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{model_dir}: no vae/config.json; the model folder is incomplete")
    config = json.loads(config_file.read_text())
    if config.get("scaling_factor") != scaling_factor:
        config["scaling_factor"] = float(scaling_factor)
        atomic_write_json(config_file, config)


def _pipeline_index(model_dir: Path, model_class: str, tokenizer_class: str) -> dict[str, Any]:
    import diffusers

    def class_of(sub: str) -> list[str]:
        name = "scheduler_config.json" if sub == "scheduler" else "config.json"
        path = model_dir / sub / name
        if not path.is_file():
            raise ModelLoadError(f"{model_dir}: no {sub}/{name}; the model folder is incomplete")
        return ["diffusers", json.loads(path.read_text())["_class_name"]]

    return {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": class_of("scheduler"),
        "text_encoder": ["transformers", model_class],
        "tokenizer": ["transformers", tokenizer_class],
        "unet": class_of("unet"),
        "vae": class_of("vae"),
    }
