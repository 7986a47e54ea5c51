"""What identifies a model in the results store, read from its folder without loading weights.

:func:`describe_model` accepts a trained model folder (``ldmscale_model.json``), its run folder
(``<run>/model/``) or a diffusers Stable Diffusion folder (``model_index.json``), and returns a
:class:`ModelInfo`: the hash of the weights and configs, width, parameter count, normalized
cost (xla convention, reference c = 320 at the same latent and context) and the training state
the export records.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from ldmscale.io import hash_json, sha256_file
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


def _model_folder(path: Path) -> tuple[Path, str]:
    if (path / "ldmscale_model.json").is_file():
        return path, "ldmscale"
    if (path / "model" / "ldmscale_model.json").is_file():
        return path / "model", "ldmscale"
    if (path / "model_index.json").is_file():
        return path, "diffusers"
    raise SweepError(
        f"{path} is not a model folder: expected ldmscale_model.json (a training run's model/ "
        "folder) or model_index.json (a diffusers Stable Diffusion folder)"
    )


def _weight_files(folder: Path) -> list[Path]:
    files = []
    for sub in ("unet", "vae"):
        d = folder / sub
        files += sorted(p for p in d.glob("*") if p.suffix in (".safetensors", ".bin", ".json"))
    own = folder / "ldmscale_model.json"
    return files + ([own] if own.is_file() else [])


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
    import json

    folder, kind = _model_folder(Path(path))
    files = _weight_files(folder)
    if not any(f.suffix in (".safetensors", ".bin") for f in files):
        raise SweepError(f"{folder}: no weight files under unet/ or vae/; is the export complete?")
    digest = hash_json([[str(f.relative_to(folder)), sha256_file(f)] for f in files], length=32)
    params = _count_params(folder / "unet")
    if kind == "ldmscale":
        meta = json.loads((folder / "ldmscale_model.json").read_text())
        meta.pop("train_config", None)
        run = meta.get("run")
        if meta.get("name"):
            name = meta["name"]
        elif folder.name == "model":
            name = folder.parent.name
        else:  # a checkpoint export <run>/evals/step-N/: name it by its run too
            name = f"{run}/{folder.name}" if run else folder.name
        c = (meta.get("unet_spec") or {}).get("c")
        return ModelInfo(
            str(folder),
            name,
            digest,
            c,
            params,
            meta.get("norm_cost"),
            meta,
            train_step=_opt(int, meta.get("train_step")),
            total_steps=_opt(int, meta.get("total_steps")),
            train_compute=_opt(float, meta.get("train_compute")),
            images_seen=_opt(int, meta.get("images_seen")),
            train_seed=_opt(int, meta.get("seed")),
            run=None if run is None else str(run),
        )
    unet_cfg = json.loads((folder / "unet" / "config.json").read_text())
    c = int(unet_cfg["block_out_channels"][0])
    return ModelInfo(str(folder), folder.name, digest, c, params, None, unet_cfg)


def _opt(cast: Callable[[Any], Any], value: Any) -> Any:
    return None if value is None else cast(value)


def describe_model(path: str | Path) -> ModelInfo:
    """Read a model folder's identity (hash, width, params, normalized cost). Cached per process."""
    path = Path(path).resolve()
    if not path.is_dir():
        raise SweepError(f"model folder not found: {path}")
    folder, _ = _model_folder(path)
    stamp = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in _weight_files(folder))
    return _describe_model_cached(str(path), stamp)
