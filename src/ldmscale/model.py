"""Load a trained ldmscale model or a diffusers Stable Diffusion folder into one `DiffusionModel`.

Two folder formats go through the same sampling code:

* an **ldmscale model folder** (``<run>/model/``, written by the trainer; see
  :mod:`ldmscale.modelfolder`): ``unet/``, ``vae/``, ``scheduler/`` (diffusers
  ``save_pretrained``) and ``ldmscale_model.json`` (:class:`~ldmscale.modelfolder.ModelMeta`:
  the ``UNetSpec``, the ``TextEncoderSpec``, the latent ``scaling_factor``, the normalized cost
  and the GFLOPs of one UNet forward). Its diffusers pipeline files, when present, are not
  read: the text encoder is loaded from the spec;
* a **diffusers Stable Diffusion pipeline folder** on local disk (``model_index.json``,
  ``unet/``, ``vae/``, ``text_encoder/`` = ``CLIPTextModel``, ``tokenizer/``, ``scheduler/``),
  so a public SD checkpoint a user holds is sampled exactly as our own models are. Nothing is
  ever downloaded.

Cost conventions (see docs/sampling.md): ``gflops_per_forward`` is one UNet forward at batch 1
counted with the ``dense`` convention (``torch.utils.flop_counter.FlopCounterMode`` on the meta
device, 2 FLOPs per multiply-add). ``norm_cost`` is the ratio to the reference width c=320 of
the paper's family: read from ``ldmscale_model.json`` for our models; for SD folders computed
from the UNet config with ``block_out_channels`` rescaled so the first width is 320 (``xla``
convention, as the family's normalized cost; SD v1.x itself gives 1.0).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from ldmscale import family
from ldmscale.family import REFERENCE_WIDTH
from ldmscale.modelfolder import (
    MODEL_FORMAT,
    ModelLoadError,
    find_model_folder,
    model_name,
    read_model_meta,
)
from ldmscale.text import load_text_encoder

log = logging.getLogger(__name__)


class PromptEncoder(Protocol):
    """Anything that turns captions into UNet context: ``[B, T, D]`` float tensors."""

    def encode(self, captions: list[str]) -> torch.Tensor: ...


class CLIPPromptEncoder:
    """A tokenizer + ``CLIPTextModel`` pair encoding prompts as ``StableDiffusionPipeline`` does.

    Pads/truncates to ``tokenizer.model_max_length`` and returns the last hidden state (after
    the final layer norm), passing the attention mask only if the text config asks for it.
    """

    def __init__(self, tokenizer: Any, text_model: Any) -> None:
        self.tokenizer = tokenizer
        self.text_model = text_model
        self.max_length = int(tokenizer.model_max_length)
        self.dim = int(text_model.config.hidden_size)

    @torch.inference_mode()
    def encode(self, captions: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            list(captions),
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            return_tensors="pt",
        )
        device = self.text_model.device
        mask = None
        if getattr(self.text_model.config, "use_attention_mask", False):
            mask = tokens.attention_mask.to(device)
        return self.text_model(tokens.input_ids.to(device), attention_mask=mask)[0]


@dataclass
class DiffusionModel:
    """Everything sampling needs, whatever folder it came from.

    unet: diffusers ``UNet2DConditionModel`` (eval mode).
    vae: diffusers ``AutoencoderKL``; images are ``vae.decode(latents / scaling_factor)``.
    text_encoder: a `PromptEncoder`; the unconditional (CFG) context is ``encode([""])``.
    scheduler_config: the training noise schedule as a diffusers scheduler config dict;
        samplers are built from it with ``from_config``.
    prediction_type: "epsilon" | "v_prediction" | "sample" (also set in ``scheduler_config``).
    norm_cost: GFLOPs of one forward relative to the c=320 reference (sampling cost unit).
    gflops_per_forward: GFLOPs of one UNet forward at batch 1, ``dense`` convention.
    """

    unet: Any
    vae: Any
    text_encoder: PromptEncoder
    scheduler_config: dict[str, Any]
    scaling_factor: float
    prediction_type: str
    norm_cost: float
    gflops_per_forward: float
    name: str
    path: Path
    source_format: str
    code_version: str | None = None
    notes: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of the latents the UNet denoises (its output channels:
        a UNet with extra conditioning channels concatenated to its input, as for
        super-resolution, takes more than it denoises)."""
        return _latent_shape(self.unet.config)

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Context ``[B, T, D]`` on the UNet's device and dtype."""
        with torch.inference_mode():
            emb = self.text_encoder.encode(list(prompts))
        return emb.to(device=self.device, dtype=self.dtype)


def load_model(
    path: str | Path,
    device: str | torch.device = "cpu",
    text_encoder: PromptEncoder | None = None,
) -> DiffusionModel:
    """Load an ldmscale model folder or a diffusers SD pipeline folder (local disk only).

    ``text_encoder`` overrides the folder's text encoder (e.g. to share one encoder across a
    sweep of models trained with the same one).
    """
    folder, kind = find_model_folder(path)
    if kind == "ldmscale":
        model = _load_ldmscale(folder, text_encoder)
    else:
        model = _load_sd(folder, text_encoder)
    model.unet.to(device).eval().requires_grad_(False)
    model.vae.to(device).eval().requires_grad_(False)
    return model


def _latent_shape(unet_config: Any) -> tuple[int, int, int]:
    size = unet_config["sample_size"]
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    channels = unet_config.get("out_channels") or unet_config["in_channels"]
    return (int(channels), int(h), int(w))


def _require(folder: Path, name: str, what: str) -> Path:
    sub = folder / name
    if not sub.is_dir():
        raise ModelLoadError(
            f"{folder}: missing component `{name}/` ({what}); the folder is incomplete. "
            f"Re-export the model or copy the `{name}/` folder into it."
        )
    return sub


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{path}: not valid JSON ({e}); the file is damaged") from e
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    return data


def _scheduler_config(folder: Path, prediction_type: str | None) -> dict[str, Any]:
    sub = _require(folder, "scheduler", "the training noise schedule, scheduler_config.json")
    cfg_file = sub / "scheduler_config.json"
    if not cfg_file.is_file():
        raise ModelLoadError(f"{sub}: missing scheduler_config.json")
    cfg = _read_json(cfg_file)
    if prediction_type is not None:
        cfg["prediction_type"] = prediction_type
    return cfg


def _load_unet_vae(folder: Path) -> tuple[Any, Any]:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet_dir = _require(folder, "unet", "the denoising UNet")
    vae_dir = _require(folder, "vae", "the autoencoder that decodes latents to images")
    try:
        unet = UNet2DConditionModel.from_pretrained(unet_dir, local_files_only=True)
        vae = AutoencoderKL.from_pretrained(vae_dir, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{folder}: cannot load unet/ or vae/: {e}") from e
    return unet, vae


def _load_ldmscale(folder: Path, text_encoder: PromptEncoder | None) -> DiffusionModel:
    meta = read_model_meta(folder)
    scheduler_config = _scheduler_config(folder, meta.prediction_type)
    unet, vae = _load_unet_vae(folder)
    if text_encoder is None:
        text_encoder = load_text_encoder(meta.text_encoder)
    gflops = meta.gflops_dense
    if gflops is None:
        gflops = family.count_gflops(meta.unet_spec, convention="dense")
    norm_cost = meta.norm_cost
    if norm_cost is None:
        norm_cost = family.normalized_cost(meta.unet_spec)
    return DiffusionModel(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        scheduler_config=scheduler_config,
        scaling_factor=meta.scaling_factor,
        prediction_type=meta.prediction_type,
        norm_cost=float(norm_cost),
        gflops_per_forward=float(gflops),
        name=model_name(folder, meta),
        path=folder,
        source_format=MODEL_FORMAT,
        code_version=meta.code_version,
        meta=meta.describe(),
    )


def _load_sd(folder: Path, text_encoder: PromptEncoder | None) -> DiffusionModel:
    index = _read_json(folder / "model_index.json")
    unet, vae = _load_unet_vae(folder)
    scheduler_config = _scheduler_config(folder, None)
    if text_encoder is None:
        from transformers import CLIPTextModel, CLIPTokenizer

        te_dir = _require(folder, "text_encoder", "the CLIPTextModel")
        tok_dir = _require(folder, "tokenizer", "the CLIP tokenizer")
        try:
            tokenizer = CLIPTokenizer.from_pretrained(tok_dir, local_files_only=True)
            text_model = (
                CLIPTextModel.from_pretrained(te_dir, local_files_only=True)
                .eval()
                .requires_grad_(False)
            )
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"{folder}: cannot load text_encoder/ or tokenizer/: {e}") from e
        text_encoder = CLIPPromptEncoder(tokenizer, text_model)
    shape = _latent_shape(unet.config)
    ctx_len = int(getattr(text_encoder, "max_length", 77))
    gflops = unet_gflops(unet.config, shape, ctx_len, "dense")
    norm_cost, notes = _norm_cost(unet.config, shape, ctx_len)
    return DiffusionModel(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        scheduler_config=scheduler_config,
        scaling_factor=float(vae.config.scaling_factor),
        prediction_type=str(scheduler_config.get("prediction_type", "epsilon")),
        norm_cost=norm_cost,
        gflops_per_forward=gflops,
        name=folder.name,
        path=folder,
        source_format="diffusers-stable-diffusion",
        code_version=index.get("_diffusers_version"),
        notes=notes,
        meta={"pipeline_class": index.get("_class_name")},
    )


def unet_gflops(
    unet_config: dict[str, Any],
    latent_shape: tuple[int, int, int],
    context_len: int,
    convention: str = "dense",
) -> float:
    """GFLOPs of one forward at batch 1 of any ``UNet2DConditionModel`` config, counted on the
    meta device in ``convention`` (``dense`` or ``xla``, see :mod:`ldmscale.flops`); the input
    has the config's ``in_channels`` at ``latent_shape``'s height and width."""
    from diffusers import UNet2DConditionModel

    from ldmscale.flops import count_flops

    cfg = dict(unet_config)
    ctx_dim = cfg.get("cross_attention_dim", 768)
    if not isinstance(ctx_dim, int):
        ctx_dim = int(ctx_dim[0])
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(cfg)
        x = torch.empty(1, int(cfg["in_channels"]), *latent_shape[1:])
        ctx = torch.empty(1, context_len, ctx_dim)
        t = torch.tensor([500])
    count = count_flops(unet, (x, t), {"encoder_hidden_states": ctx}, convention)
    return count.total / 1e9


def _norm_cost(
    unet_config: dict[str, Any],
    latent_shape: tuple[int, int, int] | None = None,
    context_len: int = 77,
    gflops: float | None = None,
) -> tuple[float, list[str]]:
    """Normalized cost of an arbitrary UNet config (``xla`` convention, as the family's):
    its GFLOPs over those of the same config with widths rescaled so the first is 320."""
    if latent_shape is None:
        latent_shape = _latent_shape(unet_config)
    widths = list(unet_config["block_out_channels"])
    if widths[0] == REFERENCE_WIDTH:
        return 1.0, []
    try:
        if gflops is None:
            gflops = unet_gflops(unet_config, latent_shape, context_len, "xla")
        ref_cfg = dict(unet_config)
        ref_cfg["block_out_channels"] = [w * REFERENCE_WIDTH // widths[0] for w in widths]
        if any(w * REFERENCE_WIDTH % widths[0] for w in widths):
            raise ValueError("widths are not proportional to the first width")
        ref = unet_gflops(ref_cfg, latent_shape, context_len, "xla")
    except Exception as e:  # any architecture the rescaling cannot build
        note = f"norm_cost reported as 1.0: cannot build the c={REFERENCE_WIDTH} reference ({e})"
        log.warning(note)
        return 1.0, [note]
    note = (
        f"norm_cost = dense GFLOPs / GFLOPs of the same UNet with block_out_channels "
        f"{ref_cfg['block_out_channels']} (first width {REFERENCE_WIDTH})"
    )
    return gflops / ref, [note]
