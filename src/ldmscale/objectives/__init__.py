"""Training objectives the one trainer (:mod:`ldmscale.train`) plugs in, and their registry.

An objective turns one mini-batch of cached tensors into a scalar loss, and may own more:
a frozen teacher, a target network, UNet inputs of its own, the scheduler its model is
sampled with. The trainer drives every objective through the same hooks
(:class:`~ldmscale.objectives.base.Objective` gives each optional one its default):

1. ``OBJECTIVES[cfg.objective](cfg)`` builds it from the :class:`~ldmscale.train.TrainConfig`;
   the builder reads ``cfg.objective_options`` (its own nested table, part of the run's
   identity) with :func:`~ldmscale.objectives.base.read_options`, so unknown keys are an error
   naming the valid ones. ``uses_teacher`` must be True exactly when ``cfg.teacher`` is set.
2. ``unet_overrides()`` -> the ``UNetSpec`` overrides it needs (``extra_in_channels``,
   ``num_class_embeds``, ``time_cond_proj_dim``), asked before the model is built; with
   ``TrainConfig.init_from`` the parent is grown into them function-preservingly
   (:mod:`ldmscale.surgery`).
3. ``setup(ctx)`` once the model is built and on its device
   (:class:`~ldmscale.objectives.base.SetupContext`: model, spec, accelerator, config, data,
   device): load and freeze a teacher (:func:`~ldmscale.objectives.base.load_teacher`), build
   a target network, read constants from the data.
4. ``load_state_dict(state)`` on a resume: what ``state_dict()`` returned at the checkpoint
   (stored in the checkpoint's ``training_state.pt`` under ``"objective"``, so exact resume
   survives a stateful objective).
5. Every step: ``loss(model, batch, generator)``; after the optimizer step and the trainer's
   EMA update, ``after_step(model)`` (e.g. a target network's EMA).
6. Every export: ``export_hints()`` -> the scheduler saved as the model's ``scheduler/`` and an
   optional sampler hint (:class:`~ldmscale.objectives.base.ExportHints`).

Determinism: ``loss`` draws every random number it needs from the ``torch.Generator`` it is
handed, in a fixed order, so that the trainer can make step ``s`` reproducible from
``(seed, s, process index)`` alone (exact resume). Random numbers are drawn on the CPU and
then moved to the batch's device, so a step draws the same numbers on every device. The other
hooks draw none (``setup`` may use the global RNG only for work a resume redoes identically).

**To add an objective** (super-resolution, DreamBooth, distillation): one file in this
package with a subclass of ``Objective`` (``name``, ``required_keys``, ``loss`` and the hooks
it needs) and a builder ``build(cfg) -> Objective``; one entry in :data:`OBJECTIVES`.
``t2i.py`` is the simplest example; ``consistency.py`` (distillation) uses every hook.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ldmscale.config import ConfigError
from ldmscale.objectives import consistency, dreambooth, guided, sr, t2i
from ldmscale.objectives.base import (
    BETA_END,
    BETA_SCHEDULE,
    BETA_START,
    NUM_TRAIN_TIMESTEPS,
    PREDICTION_TYPES,
    ExportHints,
    Objective,
    SetupContext,
    load_teacher,
    make_noise_scheduler,
    read_options,
)
from ldmscale.objectives.consistency import Consistency, ConsistencyOptions
from ldmscale.objectives.dreambooth import DreamBooth, DreamBoothOptions
from ldmscale.objectives.guided import Guided, GuidedOptions
from ldmscale.objectives.sr import SROptions, SuperResolution
from ldmscale.objectives.t2i import TextToImage, min_snr_weights

if TYPE_CHECKING:
    from ldmscale.train.config import TrainConfig

#: Objective name -> builder ``(cfg: TrainConfig) -> Objective``.
OBJECTIVES: dict[str, Callable[[TrainConfig], Objective]] = {
    "t2i": t2i.build,
    "consistency": consistency.build,
    "sr": sr.build,
    "dreambooth": dreambooth.build,
    "guided": guided.build,
}


def build_objective(cfg: TrainConfig) -> Objective:
    """Build the objective ``cfg.objective`` from ``cfg`` and check its teacher setting."""
    if cfg.objective not in OBJECTIVES:
        raise ConfigError(
            f"TrainConfig.objective: unknown objective {cfg.objective!r}; "
            f"available: {sorted(OBJECTIVES)}"
        )
    objective = OBJECTIVES[cfg.objective](cfg)
    if cfg.teacher and not objective.uses_teacher:
        raise ConfigError(
            f"TrainConfig.teacher={cfg.teacher!r}: objective {cfg.objective!r} uses no teacher; "
            "remove 'teacher' (to start from a trained model's weights, use 'init_from')"
        )
    if objective.uses_teacher and not cfg.teacher:
        raise ConfigError(
            f"objective {cfg.objective!r} distils a teacher: set TrainConfig.teacher to a "
            "trained model folder (e.g. runs/c64/model)"
        )
    return objective


__all__ = [
    "BETA_END",
    "BETA_SCHEDULE",
    "BETA_START",
    "Consistency",
    "ConsistencyOptions",
    "DreamBooth",
    "DreamBoothOptions",
    "NUM_TRAIN_TIMESTEPS",
    "OBJECTIVES",
    "PREDICTION_TYPES",
    "ExportHints",
    "Guided",
    "GuidedOptions",
    "Objective",
    "SROptions",
    "SetupContext",
    "SuperResolution",
    "TextToImage",
    "build_objective",
    "load_teacher",
    "make_noise_scheduler",
    "min_snr_weights",
    "read_options",
]
