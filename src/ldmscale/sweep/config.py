"""The sweep's configuration: :class:`SweepConfig` (what to sample and score) and its error.

Conventions: guidance ``w`` as in ``eps = u + w (c - u)``, ``w = 1`` is no guidance (and then
no doubled batch). Image ``i`` of every cell is prompt ``i`` with seed ``seed0 + i``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ldmscale.config import Config, ConfigError
from ldmscale.samplers import DEFAULT_SAMPLERS, SAMPLER_NAMES, SPACINGS

#: The spacing of every cell stored before spacing was a sweep dimension (and SD's default).
DEFAULT_SPACING = "leading"
EXECUTORS = ("serial", "processes", "ray")
PAPER_GUIDANCE = (1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0)


class SweepError(ValueError):
    """A sweep that cannot be planned or run as configured; the message says how to fix it."""


@dataclass
class SweepConfig(Config):
    """A sweep: every model x sampler x steps x guidance, ``n_images`` images per cell.

    models: model folders (``<run>/model/``, a run folder, or a diffusers SD folder).
    samplers: subset of ``ddim``, ``ddpm``, ``dpmpp`` (DPM-Solver++).
    steps: sampling step counts. DPM-Solver++ cells above ``dpmpp_max_steps`` (20, as in the
        paper) are skipped with a note in the plan.
    timestep_spacings: the schedulers' timestep spacings to sweep (``leading``, ``trailing``,
        ``linspace``): a grid dimension, stored with each cell and part of its id. ``leading``
        (SD's) starts a 4-step DDIM chain at t = 751 and a 50-step one at t = 981, so the step
        count is confounded with the starting noise level; ``trailing`` always starts at 999.
    guidance: CFG scales ``w`` (``w = 1`` is no guidance); the paper's 1.5 ... 8.
    n_images: images per cell (prompt ``i`` with seed ``seed0 + i``).
    seed0: the first seed; another ``seed0`` is a fresh seed set on the same prompts (new cells,
        and their own row-cache families), e.g. to report an optimum chosen on seed set 0.
    dataset, split, resolution: where the prompts (captions, first ``n_images`` in file order)
        and the metrics' reference images come from. ``prompts`` overrides the captions.
    metrics: metric names of the registry (:data:`ldmscale.metrics.registry.METRICS`: ``fid``,
        ``fd_inception``, ``fd_effnet``, ``fd_probe``, ``kid``, ``alignment``, ``clip_score``),
        which also says which way each is better. A custom evaluator may store other names,
        but the frontier, report and adaptive search need registered ones.
    bootstrap, ci_level: bootstrap resamples over generated images and the CI level.
    batch_size: images per sampling batch (per UNet call; CFG doubles it inside).
    executor: ``serial``, ``processes`` (``num_cpus`` local one-thread worker processes) or
        ``ray``; address: an existing Ray cluster (``ray://host:10001`` or ``auto``), None for
        a local instance with ``num_cpus`` CPUs.
    store: the results store (SQLite file).
    probe_steps: optimiser steps of the shapes probe behind ``fd_probe``/``alignment`` (its
        config is part of the metric protocol, so changing it makes new cells).
    clip_model: a local transformers CLIP folder for ``clip_score`` (raw cosine, the paper's
        ~0.31 scale); nothing is downloaded.
    rows_dir: a folder keeping every scored image's metric rows (:mod:`ldmscale.rowcache`), so
        that a cell with more images (a larger ``n_images``, the adaptive search's next round)
        samples only the images it lacks. None: off (the adaptive search then uses
        ``<store>.rows``). Rows are float64: 16 KB per image for Inception, 2 KB for the probe.
    """

    models: tuple[str, ...] = ()
    samplers: tuple[str, ...] = DEFAULT_SAMPLERS
    steps: tuple[int, ...] = (4, 8, 16, 20, 50)
    guidance: tuple[float, ...] = PAPER_GUIDANCE
    timestep_spacings: tuple[str, ...] = (DEFAULT_SPACING,)
    n_images: int = 256
    dataset: str | None = None
    split: str = "validation"
    resolution: int = 32
    prompts: tuple[str, ...] = ()
    seed0: int = 0
    metrics: tuple[str, ...] = ("fd_probe", "alignment")
    bootstrap: int = 200
    ci_level: float = 0.95
    batch_size: int = 16
    dpmpp_max_steps: int = 20
    executor: str = "serial"
    address: str | None = None
    num_cpus: int = 2
    store: str = "results.sqlite"
    probe_steps: int = 600
    clip_model: str | None = None
    rows_dir: str | None = None

    def __post_init__(self) -> None:
        bad = [s for s in self.samplers if s not in SAMPLER_NAMES]
        if bad:
            raise ConfigError(
                f"SweepConfig.samplers: unknown {bad}; choose from {list(SAMPLER_NAMES)}"
            )
        if any(int(s) < 1 for s in self.steps):
            raise ConfigError(f"SweepConfig.steps must all be >= 1, got {list(self.steps)}")
        bad = [s for s in self.timestep_spacings if s not in SPACINGS]
        if bad or not self.timestep_spacings:
            raise ConfigError(
                f"SweepConfig.timestep_spacings: unknown {bad or 'empty list'}; choose from "
                f"{list(SPACINGS)}"
            )
        if self.seed0 < 0:
            raise ConfigError(f"SweepConfig.seed0 must be >= 0, got {self.seed0}")
        if any(float(g) < 0 for g in self.guidance):
            raise ConfigError(
                f"SweepConfig.guidance must be >= 0 (1 = no guidance), got {list(self.guidance)}"
            )
        if self.n_images < 1 or self.batch_size < 1:
            raise ConfigError("SweepConfig.n_images and batch_size must be >= 1")
        if self.executor not in EXECUTORS:
            raise ConfigError(
                f"SweepConfig.executor {self.executor!r} unknown; choose from {list(EXECUTORS)}"
            )
        if not 0 < self.ci_level < 1:
            raise ConfigError(f"SweepConfig.ci_level must be in (0, 1), got {self.ci_level}")
        if self.bootstrap < 0:
            raise ConfigError(f"SweepConfig.bootstrap must be >= 0, got {self.bootstrap}")
