"""The objective protocol: what the one trainer (:mod:`ldmscale.train`) asks of an objective.

See :mod:`ldmscale.objectives` for the protocol in words. :class:`Objective` gives every
optional hook its default, so an objective writes only ``loss`` and the hooks it needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from ldmscale.config import Config, ConfigError

if TYPE_CHECKING:
    from ldmscale.cache import Conditioning
    from ldmscale.family import UNetSpec
    from ldmscale.train.config import TrainConfig

# Stable Diffusion's training noise schedule.
NUM_TRAIN_TIMESTEPS = 1000
BETA_START = 0.00085
BETA_END = 0.012
BETA_SCHEDULE = "scaled_linear"
PREDICTION_TYPES = ("epsilon", "v_prediction")


def make_noise_scheduler(prediction_type: str = "epsilon"):
    """SD's ``DDPMScheduler``: scaled-linear betas 0.00085..0.012, 1000 steps."""
    from diffusers import DDPMScheduler

    if prediction_type not in PREDICTION_TYPES:
        raise ConfigError(
            f"prediction_type must be one of {list(PREDICTION_TYPES)}, got {prediction_type!r}"
        )
    return DDPMScheduler(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        beta_start=BETA_START,
        beta_end=BETA_END,
        beta_schedule=BETA_SCHEDULE,
        clip_sample=False,
        prediction_type=prediction_type,
        steps_offset=1,
    )


@dataclass
class SetupContext:
    """What :meth:`Objective.setup` is given, once, before the first step (or the resume).

    model: the UNet being trained, unwrapped, on ``device`` (its weights are the initial ones,
        or the checkpoint's on a resume). spec: its :class:`~ldmscale.family.UNetSpec` (with
        the objective's overrides). accelerator: the run's ``accelerate.Accelerator`` (e.g. to
        ``prepare`` a teacher). cfg: the :class:`~ldmscale.train.TrainConfig` (``cfg.teacher``,
        ``cfg.objective_options``, ``cfg.seed``). cond: the training data
        (:class:`~ldmscale.cache.Conditioning`). device: where the model and batches live.
    """

    model: torch.nn.Module
    spec: UNetSpec
    accelerator: Any
    cfg: TrainConfig
    cond: Conditioning
    device: torch.device


@dataclass(frozen=True)
class ExportHints:
    """What an objective exports with its model.

    scheduler: a diffusers scheduler, saved as the model folder's ``scheduler/`` (the noise
        schedule the model was trained on; samplers are built from its config).
    sampler_hint: how the model is meant to be sampled (e.g. ``{"name": "lcm", "steps": 4}``),
        written to ``ldmscale_model.json`` as ``sampler_hint``; None = no hint (text-to-image).
    task: what the exported model is for, ``ldmscale_model.json``'s ``task`` (one of
        :data:`ldmscale.modelfolder.TASKS`).
    sr: a super-resolution model's :class:`~ldmscale.modelfolder.SRMeta` fields (a dict),
        written as ``sr``; None otherwise.
    """

    scheduler: Any
    sampler_hint: dict[str, Any] | None = None
    task: str = "t2i"
    sr: dict[str, Any] | None = None


class Objective:
    """Base class of objectives: the required ``loss`` and every optional hook's default.

    Class attributes: ``name`` (its registry key), ``required_keys`` (the cached per-row
    tensors ``loss`` reads), ``uses_teacher`` (True when it needs ``TrainConfig.teacher``; the
    trainer refuses a teacher given to an objective that uses none), ``prediction_type``
    (what the UNet predicts; the default :meth:`export_hints` saves SD's schedule with it);
    ``extra_forwards_per_step`` (its teacher's and target's forwards, for the compute count).
    """

    name: str = ""
    required_keys: tuple[str, ...] = ()
    uses_teacher: bool = False
    prediction_type: str = "epsilon"

    @property
    def extra_forwards_per_step(self) -> float:
        """UNet forwards per row and step besides the trained model's (a teacher's, a target
        network's), counted in the log's ``train_compute`` (:func:`ldmscale.cost.train_compute`).
        Default: 0."""
        return 0.0

    def unet_overrides(self) -> dict[str, int]:
        """UNetSpec overrides the objective needs (keys of ``ldmscale.family.OVERRIDE_FIELDS``:
        ``extra_in_channels``, ``num_class_embeds``, ``time_cond_proj_dim``); asked before the
        model is built. Default: none."""
        return {}

    def setup(self, ctx: SetupContext) -> None:
        """Called once after the model is built and placed, before the first step (and before
        :meth:`load_state_dict` on a resume): load and freeze a teacher, build a target network,
        read constants from the data. Default: nothing."""

    def loss(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> torch.Tensor:
        """Scalar float32 loss for ``batch`` (this process's rows, on the model's device); every
        random number from ``generator`` (a CPU generator), in a fixed order."""
        raise NotImplementedError(f"objective {type(self).__name__} defines no loss()")

    def after_step(self, model: torch.nn.Module) -> None:
        """Called after every optimizer step and the trainer's EMA update, with the unwrapped
        model (e.g. a target network's EMA). Must draw no random numbers. Default: nothing."""

    def state_dict(self) -> dict[str, Any]:
        """The objective's own state (tensors, numbers, strings, lists, dicts), saved in every
        checkpoint, so that an interrupted run resumes exactly. Default: none."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (called after :meth:`setup` on a resume)."""
        if state:
            raise ValueError(
                f"objective {self.name!r} keeps no state, but the checkpoint holds {sorted(state)}"
            )

    def export_hints(self) -> ExportHints:
        """The scheduler (and sampler hint) exported with the model. Default: SD's DDPM
        schedule with this objective's ``prediction_type``, no hint."""
        return ExportHints(scheduler=make_noise_scheduler(self.prediction_type))


C = TypeVar("C", bound=Config)


def read_options(options_cls: type[C], cfg: TrainConfig) -> C:
    """``cfg.objective_options`` read as the objective's own ``Config`` dataclass: unknown keys
    and wrong types are a :class:`ConfigError` naming the objective and the valid keys."""
    try:
        return options_cls.from_dict(dict(cfg.objective_options))
    except ConfigError as e:
        raise ConfigError(
            f"TrainConfig.objective_options of objective {cfg.objective!r}: {e}"
        ) from e


def load_teacher(model_dir: str | Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """A trained model folder's (EMA) UNet, frozen (eval mode, no gradients), on ``device``."""
    from ldmscale.surgery import load_unet

    return load_unet(model_dir, what="TrainConfig.teacher").eval().requires_grad_(False).to(device)
