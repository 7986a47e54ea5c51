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

``ddim_grid`` is deterministic DDIM (eta = 0) on the explicit grid ``t_k = round(k T / N) - 1``
(k = N .. 1, :func:`explicit_grid`), the last step to ``abar = 1``: the grid a progressive-
distillation student was trained on (:mod:`ldmscale.objectives.guided`). diffusers' DDIM steps
from ``t`` to ``t - T // N`` (a floor), which misses that grid when N does not divide T (16,
32, 64); where it divides, ``ddim_grid`` equals ``DDIMScheduler`` with ``"trailing"`` spacing
(tested). Its scheduler is :class:`GridDDIMScheduler`, written here.
"""

from __future__ import annotations

import functools
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
        """The scheduler class: a diffusers class name, or this module's ``GridDDIMScheduler``."""
        if self.scheduler == "GridDDIMScheduler":
            return grid_ddim_scheduler_class()
        import diffusers

        return getattr(diffusers, self.scheduler)


def explicit_grid(steps: int, num_train_timesteps: int = 1000) -> list[int]:
    """The timesteps ``round(k T / N) - 1`` for ``k = N .. 1`` (descending, rounding halves up,
    in integer arithmetic): the grid of a ``steps``-step progressive-distillation student. The
    grid of ``N`` steps is every other point of the grid of ``2N``."""
    if steps < 1 or steps > num_train_timesteps:
        raise ConfigError(f"grid steps must be in [1, {num_train_timesteps}], got {steps}")
    t, n = num_train_timesteps, steps
    return [(2 * k * t + n) // (2 * n) - 1 for k in range(n, 0, -1)]


def ddim_move(
    pred: Any, x: Any, abar_t: Any, abar_s: Any, prediction_type: str = "epsilon"
) -> tuple[Any, Any]:
    """One deterministic DDIM move (eta = 0) of ``x`` at ``abar_t`` to ``abar_s`` given the
    model's ``pred`` (epsilon or v) at ``x``; returns ``(x_s, x0)``. ``abar_*`` are floats or
    tensors broadcastable to ``x``; ``abar_s = 1`` returns ``x0`` itself."""
    a, b = abar_t**0.5, (1 - abar_t) ** 0.5
    if prediction_type == "epsilon":
        x0, eps = (x - b * pred) / a, pred
    elif prediction_type == "v_prediction":
        x0, eps = a * x - b * pred, a * pred + b * x
    else:
        raise ConfigError(f"prediction_type {prediction_type!r}: use 'epsilon' or 'v_prediction'")
    return abar_s**0.5 * x0 + (1 - abar_s) ** 0.5 * eps, x0


@functools.cache
def grid_ddim_scheduler_class() -> type:
    """``GridDDIMScheduler`` (built on first use, so that importing this module does not import
    diffusers)."""
    from diffusers import DDIMScheduler
    from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput

    class GridDDIMScheduler(DDIMScheduler):
        """``DDIMScheduler`` (eta = 0 only) stepping along :func:`explicit_grid`: from each grid
        timestep to the next, and from the last to ``abar = 1``."""

        def set_timesteps(self, num_inference_steps: int, device: Any = None) -> None:
            import torch

            self.num_inference_steps = num_inference_steps
            grid = explicit_grid(num_inference_steps, self.config.num_train_timesteps)
            self.timesteps = torch.tensor(grid, dtype=torch.long, device=device)

        def step(
            self, model_output, timestep, sample, eta=0.0, generator=None, return_dict=True, **_
        ):
            if eta:
                raise ConfigError("ddim_grid is deterministic DDIM: eta must be 0")
            t = int(timestep)
            grid = [int(v) for v in self.timesteps]
            i = grid.index(t)
            abar = self.alphas_cumprod.to(sample.device, sample.dtype)
            abar_s = abar[grid[i + 1]] if i + 1 < len(grid) else abar.new_tensor(1.0)
            prev, x0 = ddim_move(model_output, sample, abar[t], abar_s, self.config.prediction_type)
            if not return_dict:
                return (prev, x0)
            return DDIMSchedulerOutput(prev_sample=prev, pred_original_sample=x0)

    return GridDDIMScheduler


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
        SamplerEntry(
            "ddim_grid",
            "DDIM-grid",
            "GridDDIMScheduler",
            "deterministic DDIM on the explicit grid round(k 1000 / N) - 1, last step to "
            "abar = 1 (progressive-distillation students; equals ddim with trailing spacing "
            "where N divides 1000)",
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
