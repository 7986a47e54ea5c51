"""The sampler registry: the one table that maps a sampler name to its diffusers scheduler.

Every other module takes its sampler names, labels and schedulers from :data:`SAMPLERS`;
adding a sampler is one :class:`SamplerEntry` here. A scheduler is always built with
``from_config`` from the model's training scheduler config, so it shares the model's noise
schedule (``beta_*``, ``num_train_timesteps``, ``prediction_type``); ``options`` override
that config, ``step_options`` go to every ``scheduler.step`` call.

``lcm`` (multistep consistency sampling) is for consistency-distilled models: their exported
``scheduler/`` is an ``LCMScheduler`` config that carries the training grid
(``original_inference_steps``, ``timestep_scaling``), so the sampler adds no options of its own.
It is not in a sweep's default samplers (:data:`DEFAULT_SAMPLERS`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ldmscale.config import ConfigError

#: Timestep spacings the diffusers schedulers understand (``timestep_spacing``).
SPACINGS = ("leading", "trailing", "linspace")


@dataclass(frozen=True)
class SamplerEntry:
    """One sampler: its name (in configs, the store and the CLI), its label in figures, the
    diffusers scheduler class, config ``options``, ``step_options``, whether it draws fresh
    noise at every step (``stochastic``) and whether sweeps sample it by default
    (``default``)."""

    name: str
    label: str
    scheduler: str
    description: str
    options: dict[str, Any] = field(default_factory=dict)
    step_options: dict[str, Any] = field(default_factory=dict)
    stochastic: bool = False
    default: bool = True

    def scheduler_class(self) -> type:
        import diffusers

        return getattr(diffusers, self.scheduler)


#: name -> entry; the order is the order of figures and tables.
SAMPLERS: dict[str, SamplerEntry] = {
    e.name: e
    for e in (
        SamplerEntry(
            "ddim",
            "DDIM",
            "DDIMScheduler",
            "DDIM with eta = 0 (deterministic)",
            step_options={"eta": 0.0},
        ),
        SamplerEntry(
            "ddpm",
            "DDPM",
            "DDPMScheduler",
            "DDPM ancestral sampling (fresh noise every step)",
            stochastic=True,
        ),
        SamplerEntry(
            "dpmpp",
            "DPM-Solver++",
            "DPMSolverMultistepScheduler",
            "DPM-Solver++ 2M (deterministic; first order on the first and, below 15 steps, "
            "the last step)",
            options={"algorithm_type": "dpmsolver++", "solver_order": 2},
        ),
        SamplerEntry(
            "lcm",
            "LCM",
            "LCMScheduler",
            "multistep consistency sampling for consistency-distilled models (LCMScheduler: "
            "the consistency output at each step, re-noised to the next timestep with fresh "
            "noise except on the last; timesteps from the model's distillation grid)",
            stochastic=True,
            default=False,
        ),
    )
}

#: The sampler names, in registry order.
SAMPLER_NAMES: tuple[str, ...] = tuple(SAMPLERS)
#: The samplers a sweep samples unless told otherwise (every model can use them).
DEFAULT_SAMPLERS: tuple[str, ...] = tuple(n for n, e in SAMPLERS.items() if e.default)


def get_sampler(name: str) -> SamplerEntry:
    """The registry entry of ``name``; a ConfigError that lists the known names otherwise."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ConfigError(
            f"unknown sampler {name!r}; choose one of {list(SAMPLER_NAMES)}"
        ) from None


def sampler_label(name: str) -> str:
    """The figure label of a sampler ("DDIM", "DPM-Solver++"); the name itself if unknown."""
    entry = SAMPLERS.get(name)
    return entry.label if entry else name


def make_scheduler(
    scheduler_config: dict[str, Any], name: str, timestep_spacing: str | None = None
):
    """A fresh diffusers scheduler for sampler ``name`` from the model's training schedule;
    ``timestep_spacing`` (None: the config's) overrides the config's spacing."""
    entry = get_sampler(name)
    overrides = dict(entry.options)
    if timestep_spacing is not None:
        if timestep_spacing not in SPACINGS:
            raise ConfigError(
                f"unknown timestep_spacing {timestep_spacing!r}; choose one of {list(SPACINGS)}"
            )
        overrides["timestep_spacing"] = timestep_spacing
    return entry.scheduler_class().from_config(scheduler_config, **overrides)
