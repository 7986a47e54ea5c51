"""Exported model folders: ``<run>/model/`` at the end, ``<run>/evals/step-N/`` at kept steps.

A model folder holds ``unet/`` (the EMA weights), ``vae/`` (a copy of the run's autoencoder),
``scheduler/`` (the objective's, :class:`~ldmscale.objectives.ExportHints`) and
``ldmscale_model.json``, written last inside a temporary folder that is renamed into place.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from ldmscale import cost
from ldmscale.cache import Conditioning
from ldmscale.family import UNetSpec
from ldmscale.modelfolder import (
    ModelLoadError,
    ModelMeta,
    ParentModel,
    SRMeta,
    read_model_meta,
    write_model_folder,
)
from ldmscale.objectives import ExportHints, make_noise_scheduler
from ldmscale.provenance import code_version
from ldmscale.train.checkpoint import checkpoint_name, verify_checkpoint
from ldmscale.train.config import CheckpointError, TrainConfig
from ldmscale.train.rundir import EVALS_DIR


def eval_dir(run_dir: str | Path, step: int) -> Path:
    """The kept EMA model of step ``step``: ``<run_dir>/evals/step-<NNNNNNN>/``."""
    return Path(run_dir) / EVALS_DIR / f"step-{step:07d}"


def export_is_complete(folder: Path) -> bool:
    """True when ``folder`` is a finished model export (it is written atomically, its
    ``ldmscale_model.json`` last inside the temporary folder)."""
    if not (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file():
        return False
    try:
        return read_model_meta(folder).train_step is not None
    except ModelLoadError:
        return False


def training_state_keys(
    cfg: TrainConfig, train_step: int, norm_cost: float, extra_forwards_per_step: float = 0.0
) -> dict[str, Any]:
    """The keys every exported model's ``ldmscale_model.json`` carries about its training:
    ``train_step``, ``total_steps`` (``cfg.steps``), ``train_compute`` (norm cost x
    ``train_step``, the paper's Fig. 3 axis, plus the objective's extra forwards,
    :func:`ldmscale.cost.train_compute`), ``images_seen`` (``train_step x batch_size``),
    ``seed`` (``cfg.seed``) and ``run`` (the run folder's name)."""
    return {
        "train_step": int(train_step),
        "total_steps": int(cfg.steps),
        "train_compute": cost.train_compute(norm_cost, train_step, extra_forwards_per_step),
        "images_seen": int(train_step) * int(cfg.batch_size),
        "seed": int(cfg.seed),
        "run": Path(cfg.run_dir).resolve().name,
    }


def export_model(
    out: Path,
    ema_unet: torch.nn.Module,
    cfg: TrainConfig,
    spec: UNetSpec,
    cond: Conditioning,
    costs: dict[str, float],
    *,
    train_step: int | None = None,
    hints: ExportHints | None = None,
    parent: ParentModel | None = None,
) -> Path:
    """Write the model folder of the contract (:func:`ldmscale.modelfolder.write_model_folder`):
    unet/ (EMA), vae/, scheduler/, the diffusers pipeline files, ldmscale_model.json.

    ``train_step`` (default ``cfg.steps``) is the step the weights belong to; the json gets
    :func:`training_state_keys` for it. ``hints`` (the objective's): the scheduler saved as
    ``scheduler/`` (default SD's DDPM with ``cfg.prediction_type``), the model's ``task`` and
    a ``sampler_hint`` when there is one. ``parent``: the ``init_from`` model as it was when
    training started (:func:`ldmscale.train.loop.parent_record`). The folder is
    written atomically (a kill leaves the old folder or none); kept checkpoints (``train_step``
    given) get no pipeline files.
    """
    from ldmscale.text import TextEncoderSpec

    step = cfg.steps if train_step is None else int(train_step)
    hints = hints or ExportHints(scheduler=make_noise_scheduler(cfg.prediction_type))
    text_encoder = cfg.text_encoder or cond.text_encoder
    if text_encoder is None:
        text_encoder = {"kind": "minilm", "path": None, "max_length": spec.context_len}
        warnings.warn(
            "train config names no text_encoder and the embedding cache does not record one; "
            f"the exported model assumes {text_encoder}",
            stacklevel=2,
        )
    meta = ModelMeta(
        unet_spec=spec,
        text_encoder=TextEncoderSpec.from_dict(text_encoder),
        scaling_factor=cond.scaling_factor,
        task=hints.task,
        parent=parent,
        prediction_type=cfg.prediction_type,
        norm_cost=costs["norm_cost"],
        gflops_xla=costs["gflops_xla"],
        gflops_dense=costs["gflops_dense"],
        train_steps=cfg.steps,
        **training_state_keys(
            cfg, step, costs["norm_cost"], costs.get("extra_forwards_per_step", 0.0)
        ),
        sampler_hint=hints.sampler_hint,
        sr=SRMeta.from_dict(hints.sr) if hints.sr else None,
        train_config=cfg.to_dict(),
        code_version=code_version(),
    )
    return write_model_folder(
        out, ema_unet, cfg.vae, hints.scheduler, meta, pipeline=train_step is None
    )


def restore_past_evals(
    run_dir: Path,
    steps: list[int],
    cfg: TrainConfig,
    spec: UNetSpec,
    cond: Conditioning,
    costs: dict[str, float],
    hints: ExportHints | None = None,
    parent: ParentModel | None = None,
) -> None:
    """On resume: re-export kept models of steps already trained whose folder is missing
    (deleted by hand), from the checkpoint of that step when it still exists; else warn."""
    for step in steps:
        out = eval_dir(run_dir, step)
        if export_is_complete(out):
            continue
        ck = run_dir / "checkpoints" / checkpoint_name(step)
        try:
            verify_checkpoint(ck)
        except CheckpointError:
            warnings.warn(
                f"kept model {out} is missing and step {step} is behind the resume point with no "
                f"checkpoint left to rebuild it from; rerun with --overwrite to regenerate it",
                stacklevel=3,
            )
            continue
        from diffusers import UNet2DConditionModel

        ema_unet = UNet2DConditionModel.from_pretrained(ck / "unet_ema")
        export_model(
            out, ema_unet, cfg, spec, cond, costs, train_step=step, hints=hints, parent=parent
        )
