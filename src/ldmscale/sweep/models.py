"""What identifies a model in the results store, read from its folder without loading weights.

:func:`describe_model` accepts a trained model folder (``ldmscale_model.json``), its run folder
(``<run>/model/``) or a diffusers Stable Diffusion folder (``model_index.json``), and returns a
:class:`ModelInfo`: the hash of the weights and configs, width, parameter count, normalized
cost (xla convention, reference c = 320 at the same latent and context) and the training state
the export records.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from ldmscale.modelfolder import (
    ModelLoadError,
    find_model_folder,
    hashed_files,
    model_hash,
    model_name,
    read_model_meta,
)
from ldmscale.sweep.config import SweepError


@dataclass(frozen=True)
class ModelInfo:
    """What identifies a model in the store, read from its folder without loading weights.

    hash: sha256 over the UNet and VAE weight files and the model's JSON configs.
    norm_cost: normalized cost (None for SD folders until the evaluator reports it).
    config: ``ldmscale_model.json`` (minus ``train_config``) or the UNet config.
    train_step, total_steps, train_compute, images_seen, train_seed, run: the training state a
        trainer export records in ``ldmscale_model.json`` (keys ``train_step``, ``total_steps``,
        ``train_compute`` = normalized cost x ``train_step``, ``images_seen``, ``seed``,
        ``run``); None when the folder does not say (SD folders, older exports).
    """

    path: str
    name: str
    hash: str
    c: int | None
    params: int | None
    norm_cost: float | None
    config: dict = field(default_factory=dict, compare=False)
    train_step: int | None = None
    total_steps: int | None = None
    train_compute: float | None = None
    images_seen: int | None = None
    train_seed: int | None = None
    run: str | None = None

    @property
    def guidance_embedded(self) -> bool:
        """Whether the UNet takes guidance as an embedding (``time_cond_proj_dim`` set): one
        forward per step at any ``w``, no doubled CFG batch."""
        unet = self.config.get("unet_spec", self.config)
        return bool(unet.get("time_cond_proj_dim"))


def _model_folder(path: Path) -> tuple[Path, str]:
    try:
        return find_model_folder(path)
    except ModelLoadError as e:
        raise SweepError(str(e)) from None


def _count_params(unet_dir: Path) -> int | None:
    files = sorted(unet_dir.glob("*.safetensors"))
    if not files:
        return None
    from safetensors import safe_open

    total = 0
    for f in files:
        with safe_open(f, framework="numpy") as st:
            for k in st.keys():
                total += math.prod(st.get_slice(k).get_shape())
    return total


@cache
def _describe_model_cached(path: str, stamp: tuple) -> ModelInfo:
    folder, kind = _model_folder(Path(path))
    if not any(f.suffix in (".safetensors", ".bin") for f in hashed_files(folder)):
        raise SweepError(f"{folder}: no weight files under unet/ or vae/; is the export complete?")
    digest = model_hash(folder)
    params = _count_params(folder / "unet")
    if kind == "ldmscale":
        meta = read_model_meta(folder)
        return ModelInfo(
            str(folder),
            model_name(folder, meta),
            digest,
            meta.unet_spec.c,
            params,
            meta.norm_cost,
            meta.describe(),
            train_step=meta.train_step,
            total_steps=meta.total_steps,
            train_compute=meta.train_compute,
            images_seen=meta.images_seen,
            train_seed=meta.seed,
            run=meta.run,
        )
    unet_cfg = json.loads((folder / "unet" / "config.json").read_text())
    c = int(unet_cfg["block_out_channels"][0])
    return ModelInfo(str(folder), folder.name, digest, c, params, None, unet_cfg)


def describe_model(path: str | Path) -> ModelInfo:
    """Read a model folder's identity (hash, width, params, normalized cost). Cached per process."""
    path = Path(path).resolve()
    if not path.is_dir():
        raise SweepError(f"model folder not found: {path}")
    folder, _ = _model_folder(path)
    stamp = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in hashed_files(folder))
    return _describe_model_cached(str(path), stamp)
