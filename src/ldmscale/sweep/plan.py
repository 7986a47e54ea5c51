"""Cells and plans: the grid of (model, sampler, spacing, steps, guidance) cells of a sweep.

A sweep is planned from a :class:`~ldmscale.sweep.config.SweepConfig` into :class:`Cell` s:
the full grid (:func:`plan_sweep`: model x sampler x timestep spacing x steps x guidance) or
an explicit list of settings (:func:`plan_cells`). Every cell uses the same prompt set (the
first ``n_images`` validation captions of a dataset, in file order) and the same seed set
(``range(seed0, seed0 + n_images)``): image ``i`` of every cell is prompt ``i`` with seed
``seed0 + i``, so cells differ only in what the sweep varies. A cell with fewer images (the
adaptive search, :mod:`ldmscale.adaptive`) uses the first ``n`` of both lists.

An evaluator maps a cell to a :class:`CellResult` (``Evaluator``); the built-in one is
:func:`ldmscale.sweep.evaluate.evaluate_cell`. UNet evaluations of a cell = images x steps x
(2 with CFG's doubled batch, else 1; 1 for a model that takes guidance as an embedding).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ldmscale import cost
from ldmscale.io import hash_json
from ldmscale.samplers import SAMPLER_NAMES, SPACINGS
from ldmscale.sweep.config import DEFAULT_SPACING, SweepConfig, SweepError
from ldmscale.sweep.models import ModelInfo, describe_model


@dataclass(frozen=True)
class Cell:
    """One evaluation: a model sampled with one sampler config on ``n_images`` prompts/seeds.

    prompts[i] is sampled with seeds[i]; protocol fixes the metrics and their reference;
    timestep_spacing is the schedulers' spacing (``leading``, ``trailing``, ``linspace``).
    """

    model: ModelInfo
    sampler: str
    steps: int
    guidance: float
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    protocol: dict = field(compare=False)
    batch_size: int = 16
    rows_dir: str | None = field(default=None, compare=False)  # how it runs, not what it is
    timestep_spacing: str = DEFAULT_SPACING

    @property
    def n_images(self) -> int:
        return len(self.seeds)

    @property
    def evaluations_per_step(self) -> int:
        """UNet evaluations per image and step: 2 with CFG's doubled batch (``w != 1``), 1
        without, or for a model that takes guidance as an embedding (:mod:`ldmscale.cost`)."""
        return cost.evaluations_per_step(self.guidance, self.model.guidance_embedded)

    @property
    def cfg(self) -> bool:
        """Whether sampling runs the doubled CFG batch."""
        return self.evaluations_per_step == 2

    @property
    def unet_evals(self) -> int:
        """UNet evaluations for the whole cell: images x steps x :attr:`evaluations_per_step`."""
        return cost.unet_evaluations(self.steps, self.evaluations_per_step, self.n_images)

    @property
    def seed0(self) -> int:
        """The first seed of the cell's seed set (image ``i`` has seed ``seed0 + i``)."""
        return int(self.seeds[0]) if self.seeds else 0

    @property
    def group(self) -> tuple[str, str, int, str]:
        """(model hash, sampler, steps, spacing): the cells among which guidance is optimized."""
        return (self.model.hash, self.sampler, self.steps, self.timestep_spacing)

    @property
    def sampler_config(self) -> dict[str, Any]:
        """The sampler part of the cell's identity (:func:`sampler_identity`)."""
        return sampler_identity(self.sampler, self.steps, self.guidance, self.timestep_spacing)

    @property
    def family(self) -> str:
        """The row-cache key: the cell without its image count (:mod:`ldmscale.rowcache`)."""
        from ldmscale.rowcache import family_key

        return family_key(self.model.hash, self.sampler_config, self.protocol, self.seed0)

    @property
    def cell_id(self) -> str:
        """Deterministic id: hash of model weights, sampler config, N, prompts, seeds, protocol."""
        return hash_json(
            {
                "model_hash": self.model.hash,
                "sampler": self.sampler_config,
                "n_images": self.n_images,
                "prompts": hash_json(list(self.prompts)),
                "seeds": hash_json(list(self.seeds)),
                "protocol": self.protocol,
            },
            length=24,
        )

    def describe(self) -> str:
        spacing = "" if self.timestep_spacing == DEFAULT_SPACING else f" {self.timestep_spacing}"
        seeds = f" seed0={self.seed0}" if self.seed0 else ""
        return (
            f"{self.model.name} {self.sampler}{spacing} {self.steps} steps w={self.guidance:g} "
            f"N={self.n_images}{seeds}"
        )


def sampler_identity(
    sampler: str, steps: int, guidance: float, timestep_spacing: str = DEFAULT_SPACING
) -> dict[str, Any]:
    """``{"name", "steps", "guidance"[, "timestep_spacing"]}``: the sampler part of a cell id and
    row-cache key. The spacing key is left out for ``leading`` so that cells stored before the
    spacing was a sweep dimension (all ``leading``) keep their ids."""
    out: dict[str, Any] = {"name": sampler, "steps": steps, "guidance": guidance}
    if timestep_spacing != DEFAULT_SPACING:
        out["timestep_spacing"] = timestep_spacing
    return out


@dataclass
class CellResult:
    """What an evaluator returns for a cell.

    metrics: {name: {"value", "lo", "hi", "n"}} (lo/hi: bootstrap CI at the protocol's level).
    nfe: UNet evaluations per image (the steps; CFG's doubled batch is one evaluation).
    flops: actual FLOPs per image, including the doubled CFG batch (None if unknown).
    norm_cost: the model's normalized cost, when the cell's ModelInfo did not know it.
    wall_s: seconds the evaluation took. extra: anything else for the provenance.
    """

    metrics: dict[str, dict[str, float]]
    nfe: float
    flops: float | None = None
    norm_cost: float | None = None
    wall_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


Evaluator = Callable[[Cell], CellResult]


@dataclass
class SweepContext:
    """The resolved inputs every cell of a sweep shares: models, prompts, seeds, protocol."""

    models: list[ModelInfo]
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    protocol: dict
    batch_size: int
    rows_dir: str | None = None

    def cell(
        self,
        model: ModelInfo,
        sampler: str,
        steps: int,
        guidance: float,
        n_images: int,
        timestep_spacing: str = DEFAULT_SPACING,
    ) -> Cell:
        """The cell of ``model`` at one sampler setting on the first ``n_images`` prompts/seeds."""
        if n_images > len(self.seeds):
            raise SweepError(f"a cell of {n_images} images exceeds the sweep's {len(self.seeds)}")
        if timestep_spacing not in SPACINGS:
            raise SweepError(
                f"unknown timestep spacing {timestep_spacing!r}; choose from {list(SPACINGS)}"
            )
        return Cell(
            model=model,
            sampler=sampler,
            steps=int(steps),
            guidance=round(float(guidance), 6),
            prompts=self.prompts[:n_images],
            seeds=self.seeds[:n_images],
            protocol=self.protocol,
            batch_size=self.batch_size,
            rows_dir=self.rows_dir,
            timestep_spacing=timestep_spacing,
        )


@dataclass
class Plan:
    """The cells of a sweep, in execution order (grouped by model), plus notes on skipped ones."""

    cells: list[Cell]
    notes: list[str]
    context: SweepContext

    @property
    def unet_evals(self) -> int:
        return sum(c.unet_evals for c in self.cells)

    @property
    def images(self) -> int:
        return sum(c.n_images for c in self.cells)


def load_prompts(cfg: SweepConfig) -> tuple[tuple[str, ...], dict[str, Any]]:
    """The first ``n_images`` prompts (dataset captions in file order, or ``cfg.prompts``),
    cycled if there are fewer, and a description of where they came from."""
    source: dict[str, Any]
    if cfg.prompts:
        captions = list(cfg.prompts)
        source = {"source": "config"}
    elif cfg.dataset:
        from ldmscale.data import load_dataset

        ds = load_dataset(cfg.dataset, split=cfg.split, resolution=cfg.resolution, validate=False)
        captions = list(ds.captions)
        source = {
            "source": "dataset",
            "dataset": str(cfg.dataset),
            "split": cfg.split,
            "fingerprint": ds.fingerprint(),
        }
    else:
        raise SweepError(
            "the sweep has no prompts: set `dataset` (a dataset folder; its validation captions "
            "are used) or `prompts` in the sweep config"
        )
    if not captions:
        raise SweepError(f"no captions found in {source}")
    source["cycled"] = len(captions) < cfg.n_images
    source["available"] = len(captions)
    prompts = tuple(captions[i % len(captions)] for i in range(cfg.n_images))
    return prompts, source


def metric_protocol(cfg: SweepConfig, prompt_source: dict[str, Any]) -> dict[str, Any]:
    """The metric protocol: part of every cell id, so changing it makes new cells."""
    return {
        "metrics": sorted(cfg.metrics),
        "bootstrap": cfg.bootstrap,
        "ci_level": cfg.ci_level,
        "reference": {
            "dataset": str(cfg.dataset) if cfg.dataset else None,
            "split": cfg.split,
            "resolution": cfg.resolution,
            "fingerprint": prompt_source.get("fingerprint"),
        },
        "prompts": prompt_source,
        "probe": {"steps": cfg.probe_steps},
        "clip_model": cfg.clip_model,
    }


def resolve(cfg: SweepConfig, models: Sequence[str | Path] | None = None) -> SweepContext:
    """Describe the models (``cfg.models``, or ``models`` when given) and fix the prompt set,
    seed set and protocol."""
    paths = list(cfg.models if models is None else models)
    if not paths:
        raise SweepError("the sweep has no models: set `models` (model folders) or pass --models")
    models_ = [describe_model(p) for p in paths]  # a model listed twice: the plan drops its cells
    prompts, source = load_prompts(cfg)
    seeds = tuple(range(cfg.seed0, cfg.seed0 + cfg.n_images))
    return SweepContext(
        models_, prompts, seeds, metric_protocol(cfg, source), cfg.batch_size, cfg.rows_dir
    )


def grid_settings(cfg: SweepConfig) -> list[tuple[str, int, float, str]]:
    """Every (sampler, steps, guidance, timestep_spacing) of one model's grid, in plan order
    (sampler, then spacing, then steps, then guidance); DPM-Solver++ settings above
    ``dpmpp_max_steps`` are left out (the paper stops it at 20 steps)."""
    spacings = list(dict.fromkeys(cfg.timestep_spacings))
    return [
        (sampler, steps, g, spacing)
        for sampler in cfg.samplers
        for spacing in spacings
        for steps in sorted({int(s) for s in cfg.steps})
        if not (sampler == "dpmpp" and steps > cfg.dpmpp_max_steps)
        for g in sorted({float(g) for g in cfg.guidance})
    ]


#: An explicit cell setting: (model folder, sampler, steps, guidance, timestep spacing).
Setting = tuple[str, str, int, float, str]


def _check_setting(setting: Sequence[Any], i: int) -> Setting:
    if isinstance(setting, str | bytes) or len(setting) != 5:
        raise SweepError(
            f"setting {i} ({setting!r}) must be (model_path, sampler, steps, guidance, "
            "timestep_spacing)"
        )
    path, sampler, steps, guidance, spacing = setting
    if sampler not in SAMPLER_NAMES:
        raise SweepError(
            f"setting {i}: unknown sampler {sampler!r}; choose from {list(SAMPLER_NAMES)}"
        )
    try:
        steps_i, g = int(steps), float(guidance)
    except (TypeError, ValueError) as e:
        raise SweepError(f"setting {i}: steps and guidance must be numbers ({e})") from e
    if steps_i != steps or steps_i < 1:
        raise SweepError(f"setting {i}: steps must be an integer >= 1, got {steps!r}")
    if not g >= 0:
        raise SweepError(f"setting {i}: guidance must be >= 0 (1 = no guidance), got {guidance!r}")
    if spacing not in SPACINGS:
        raise SweepError(
            f"setting {i}: unknown timestep spacing {spacing!r}; choose from {list(SPACINGS)}"
        )
    return (str(path), str(sampler), steps_i, g, str(spacing))


def _dedupe(cells: list[Cell], notes: list[str]) -> list[Cell]:
    seen: set[str] = set()
    unique = []
    for c in cells:
        if c.cell_id not in seen:
            seen.add(c.cell_id)
            unique.append(c)
    if len(unique) < len(cells):
        notes.append(
            f"{len(cells) - len(unique)} duplicate cells dropped (same model listed twice?)"
        )
    return unique


def plan_cells(
    cfg: SweepConfig,
    settings: Iterable[Sequence[Any]],
    context: SweepContext | None = None,
) -> Plan:
    """The cells of an explicit list of settings instead of the grid.

    Each setting is ``(model_path, sampler, steps, guidance, timestep_spacing)``; every cell
    has ``cfg.n_images`` images on the sweep's prompts and seeds (``cfg.seed0`` onwards) under
    its metric protocol, so a listed setting that is also a grid cell has the grid cell's id and
    is not evaluated twice. ``cfg.models``, ``samplers``, ``steps``, ``guidance`` and
    ``timestep_spacings`` are ignored; ``context`` (from :func:`resolve`) fixes prompts, seeds
    and protocol when given. Duplicates are dropped; cells are grouped by model (first
    appearance order) so a worker loads each model once. A DPM-Solver++ setting above
    ``dpmpp_max_steps`` is kept (it was asked for) with a note.

    Uses: re-scoring each optimal-guidance cell on a fresh seed set (``cfg.replace(seed0=...)``)
    and scoring training checkpoints at one fixed setting.
    """
    checked = [_check_setting(s, i) for i, s in enumerate(settings)]
    if not checked:
        raise SweepError("plan_cells needs at least one (model, sampler, steps, w, spacing)")
    paths = list(dict.fromkeys(s[0] for s in checked))
    if context is None:
        ctx = resolve(cfg, models=paths)
    else:
        infos = {describe_model(p).hash: describe_model(p) for p in paths}
        ctx = dataclasses.replace(context, models=list(infos.values()))
    by_model: dict[str, list[Cell]] = {}
    notes: list[str] = []
    for path, sampler, steps, g, spacing in checked:
        model = describe_model(path)
        if sampler == "dpmpp" and steps > cfg.dpmpp_max_steps:
            notes.append(
                f"DPM-Solver++ at {steps} steps (above dpmpp_max_steps={cfg.dpmpp_max_steps}) "
                "kept: it was listed explicitly"
            )
        cell = ctx.cell(model, sampler, steps, g, cfg.n_images, spacing)
        by_model.setdefault(model.hash, []).append(cell)
    cells = [c for group in by_model.values() for c in group]
    return Plan(_dedupe(cells, notes), list(dict.fromkeys(notes)), ctx)


def plan_sweep(cfg: SweepConfig, context: SweepContext | None = None) -> Plan:
    """All cells of the grid (model x sampler x spacing x steps x guidance), grouped by model
    (so a worker loads each model once)."""
    ctx = context or resolve(cfg)
    cells: list[Cell] = []
    notes: list[str] = []
    skipped_dpmpp = sorted({int(s) for s in cfg.steps if int(s) > cfg.dpmpp_max_steps})
    if "dpmpp" in cfg.samplers and skipped_dpmpp:
        notes.append(
            f"DPM-Solver++ cells with {skipped_dpmpp} steps skipped: the solver is meant for "
            f"<= {cfg.dpmpp_max_steps} steps (as in the paper); raise dpmpp_max_steps to keep them"
        )
    settings = grid_settings(cfg)
    for model in ctx.models:
        for sampler, steps, g, spacing in settings:
            cells.append(ctx.cell(model, sampler, steps, g, cfg.n_images, spacing))
    return Plan(_dedupe(cells, notes), notes, ctx)
