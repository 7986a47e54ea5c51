"""Start a model from a trained one: function-preserving growth of a parent UNet.

``init_from(model_dir, spec)`` loads the parent's UNet (``<model_dir>/unet/``: in a model
folder written by ``ldmscale train`` that is the EMA), builds the child's UNet for ``spec``
(the parent's architecture plus the overrides an objective asks for, see
:data:`ldmscale.family.OVERRIDE_FIELDS`), copies every parent weight and initialises the new
layers so that the child computes exactly what the parent does:

- extra ``conv_in`` input channels (``extra_in_channels``, concatenated *after* the latent):
  zero weights; the latent channels' weights and the bias are copied;
- a class embedding (``num_class_embeds``): all zero, so any ``class_labels`` add 0 to the
  time embedding;
- a guidance-embedding projection (``time_cond_proj_dim``, ``time_embedding.cond_proj``,
  bias-free): zero, so any ``timestep_cond`` adds 0.

The architecture must otherwise be the parent's: the same ``c``, context width, latent
channels, layers per block and heads (weight shapes and the function depend on them). The
latent size and context length may differ (they change no weight). An override the parent
already has must have the parent's size (``extra_in_channels`` may grow).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ldmscale.family import UNetSpec, build_unet

WEIGHTS = "diffusion_pytorch_model.safetensors"
#: Parameters a grown child may have that its parent lacks; they start at zero.
ZERO_INIT = ("class_embedding.weight", "time_embedding.cond_proj.weight")
# UNet config keys that may differ between parent and child (no weight depends on them, or
# the growth handles them).
_FREE_KEYS = {"sample_size", "in_channels", "num_class_embeds", "time_cond_proj_dim"}
# Readable names of the UNet config keys, in UNetSpec terms.
_SPEC_NAMES = {
    "block_out_channels": "c (block widths)",
    "cross_attention_dim": "context_dim",
    "out_channels": "latent_channels",
    "attention_head_dim": "heads / head_dim",
    "norm_num_groups": "c (norm groups)",
}


class SurgeryError(ValueError):
    """A parent model that cannot be loaded or grown into the requested spec."""


def model_unet_dir(model_dir: str | Path, what: str = "TrainConfig.init_from") -> Path:
    """``<model_dir>/unet`` (or ``<model_dir>/model/unet`` for a run folder), checked."""
    root = Path(model_dir)
    if not root.is_dir():
        raise SurgeryError(
            f"{what}: model folder not found: {root}. Give the model/ folder of a finished "
            "`ldmscale train` run (e.g. runs/c64/model)"
        )
    for unet in (root / "unet", root / "model" / "unet"):
        if (unet / "config.json").is_file() and (unet / WEIGHTS).is_file():
            return unet
    raise SurgeryError(
        f"{what}: {root} is not a trained model folder: it has no unet/config.json and "
        f"unet/{WEIGHTS}. Give the model/ folder of a finished `ldmscale train` run "
        "(e.g. runs/c64/model), whose unet/ holds the EMA weights"
    )


def load_unet(model_dir: str | Path, what: str = "TrainConfig.init_from"):
    """The UNet of a trained model folder (float32, CPU, eval mode)."""
    from diffusers import UNet2DConditionModel

    unet_dir = model_unet_dir(model_dir, what)
    try:
        return UNet2DConditionModel.from_pretrained(unet_dir).eval()
    except (OSError, ValueError, RuntimeError) as e:
        raise SurgeryError(f"{what}: cannot load the UNet in {unet_dir} ({e})") from e


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple | list) else v


def check_growable(parent_config: dict[str, Any], spec: UNetSpec) -> None:
    """Raise :class:`SurgeryError` unless a UNet with ``parent_config`` can grow into ``spec``."""
    child = spec.unet_config()
    diffs = [
        f"{_SPEC_NAMES.get(k, k)}: parent {_plain(parent_config.get(k))!r}, child {_plain(v)!r}"
        for k, v in child.items()
        if k not in _FREE_KEYS and _plain(parent_config.get(k)) != _plain(v)
    ]
    parent_extra = int(parent_config["in_channels"]) - int(parent_config["out_channels"])
    if spec.extra_in_channels < parent_extra:
        diffs.append(
            f"extra_in_channels: parent {parent_extra}, child {spec.extra_in_channels} "
            "(input channels can only be added)"
        )
    for key in ("num_class_embeds", "time_cond_proj_dim"):
        have = parent_config.get(key) or 0
        if have and have != getattr(spec, key):
            diffs.append(f"{key}: parent {have}, child {getattr(spec, key)}")
    if diffs:
        raise SurgeryError(
            "the parent model cannot be grown into the requested UNet (only extra input "
            "channels, a class embedding and a guidance projection can be added): "
            + "; ".join(diffs)
            + ". Train the child with the parent's c, heads, layers_per_block, context width "
            "and latent channels"
        )


@torch.no_grad()
def grow_unet(parent: torch.nn.Module, spec: UNetSpec):
    """A new UNet for ``spec`` that computes what ``parent`` computes (see the module doc)."""
    check_growable(dict(parent.config), spec)
    child = build_unet(spec)
    src = parent.state_dict()
    new: dict[str, torch.Tensor] = {}
    for key, like in child.state_dict().items():
        if key in src and src[key].shape == like.shape:
            new[key] = src[key].to(like.dtype)
        elif key == "conv_in.weight" and key in src:
            w = torch.zeros_like(like)
            w[:, : src[key].shape[1]] = src[key]
            new[key] = w
        elif key in ZERO_INIT and key not in src:
            new[key] = torch.zeros_like(like)
        else:
            raise SurgeryError(f"cannot initialise {key} {tuple(like.shape)} from the parent")
    dropped = sorted(set(src) - set(new))
    if dropped:
        raise SurgeryError(f"the child UNet has no place for the parent's weights {dropped[:5]}")
    child.load_state_dict(new, strict=True)
    return child


def init_from(model_dir: str | Path, spec: UNetSpec):
    """The child UNet for ``spec``, grown from the trained model folder ``model_dir``'s UNet."""
    return grow_unet(load_unet(model_dir), spec)
