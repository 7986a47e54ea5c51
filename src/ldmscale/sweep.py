"""Sweeps: the grid of (model, sampler, steps, guidance) cells, run resumably into a results store.

A sweep is planned from a :class:`SweepConfig` into :class:`Cell` s: the full grid
(:func:`plan_sweep`: model x sampler x timestep spacing x steps x guidance) or an explicit list
of settings (:func:`plan_cells`). Every cell uses the same
prompt set (the first ``n_images`` validation captions of a dataset, in file order) and the
same seed set (``range(seed0, seed0 + n_images)``): image ``i`` of every cell is prompt ``i``
with seed ``i``, so cells differ only in what the sweep varies. A cell with fewer images (the
adaptive search, :mod:`ldmscale.adaptive`) uses the first ``n`` of both lists.

Cells are evaluated by a pluggable callable ``evaluate(cell) -> CellResult``; the real one,
:func:`evaluate_cell`, samples with per-image seeds (``ldmscale.sampling.generate``), scores the
images (``ldmscale.metrics``) and attaches bootstrap confidence intervals. Each result is
written to the :class:`~ldmscale.store.ResultsStore` in its own transaction as soon as it
completes, by this (driver) process only. A rerun skips every cell already stored, so a
killed sweep resumes where it stopped.

Executors: ``serial`` (this process) or ``ray`` (cells as Ray tasks on a local instance or an
existing cluster; results come back to the driver, which writes them).

Conventions: guidance ``w`` as in ``eps = u + w (c - u)``, ``w = 1`` is no guidance (and then no
doubled batch). Sampling cost = normalized cost x steps. UNet evaluations of a cell =
images x steps x (2 with CFG, else 1).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, overload

import numpy as np

from ldmscale import cost
from ldmscale.config import Config, ConfigError
from ldmscale.io import hash_json, sha256_file
from ldmscale.provenance import code_version
from ldmscale.samplers import SAMPLER_NAMES, SPACINGS
from ldmscale.store import ResultsStore

#: The spacing of every cell stored before spacing was a sweep dimension (and SD's default).
DEFAULT_SPACING = "leading"
EXECUTORS = ("serial", "ray")
PAPER_GUIDANCE = (1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0)

#: Rough metric cost in seconds per generated image on 2 CPU cores, for ``--dry-run``
#: (Inception FID ~8 img/s and EfficientNet ~22 img/s measured here; the others are guesses).
METRIC_SECONDS_PER_IMAGE = {
    "fid": 1 / 10,
    "fd_inception": 1 / 10,
    "fd_effnet": 1 / 22,
    "fd_probe": 1 / 200,
    "alignment": 1 / 100,
    "clip_score": 1 / 10,
}
DEFAULT_METRIC_SECONDS = 1 / 20


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
    metrics: metric names (see :func:`compute_metrics`); lower-is-better ones start with
        ``fid``/``fd_``/``kid``.
    bootstrap, ci_level: bootstrap resamples over generated images and the CI level.
    batch_size: images per sampling batch (per UNet call; CFG doubles it inside).
    executor: ``serial`` or ``ray``; address: an existing Ray cluster (``ray://host:10001`` or
        ``auto``), None for a local instance with ``num_cpus`` CPUs.
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
    samplers: tuple[str, ...] = SAMPLER_NAMES
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


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# Cells and plans
# --------------------------------------------------------------------------------------


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
    def cfg(self) -> bool:
        """Whether sampling runs the doubled CFG batch (``w != 1``)."""
        return cost.cfg_evaluations(self.guidance) == 2

    @property
    def unet_evals(self) -> int:
        """UNet evaluations for the whole cell: images x steps x (2 with CFG)."""
        return cost.unet_evaluations(self.steps, cost.cfg_evaluations(self.guidance), self.n_images)

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


# --------------------------------------------------------------------------------------
# Running cells
# --------------------------------------------------------------------------------------


def cell_row(cell: Cell, result: CellResult) -> dict[str, Any]:
    """The results-store row of an evaluated cell (everything that produced it).

    ``train_step``/``train_compute``/``train_seed`` come from the model folder (None when it
    does not record them; ``train_compute`` falls back to normalized cost x ``train_step``).
    ``provenance["rows_dir"]`` (absolute) names the row cache the cell's per-image rows went to
    and ``provenance["prompt_keys_hash"]`` lets :func:`cell_rows` check they are this cell's.
    """
    from ldmscale.rowcache import prompt_keys

    norm_cost = cell.model.norm_cost if cell.model.norm_cost is not None else result.norm_cost
    m = cell.model
    train_compute = m.train_compute
    if train_compute is None and m.train_step is not None and norm_cost is not None:
        train_compute = float(norm_cost) * m.train_step
    return {
        "cell_id": cell.cell_id,
        "model": cell.model.name,
        "model_path": cell.model.path,
        "model_hash": cell.model.hash,
        "c": cell.model.c,
        "params": cell.model.params,
        "norm_cost": norm_cost,
        "sampler": cell.sampler,
        "steps": cell.steps,
        "guidance": cell.guidance,
        "n_images": cell.n_images,
        "nfe": result.nfe,
        "sampling_cost": None if norm_cost is None else cost.sampling_cost(norm_cost, cell.steps),
        "flops": result.flops,
        "timestep_spacing": cell.timestep_spacing,
        "seed0": cell.seed0,
        "train_step": m.train_step,
        "train_compute": train_compute,
        "train_seed": m.train_seed,
        "metrics": result.metrics,
        "protocol": cell.protocol,
        "provenance": {
            "model_config": cell.model.config,
            "sampler_config": cell.sampler_config,
            "batch_size": cell.batch_size,
            "seeds": list(cell.seeds),
            "prompts_hash": hash_json(list(cell.prompts)),
            "prompt_keys_hash": hash_json(prompt_keys(cell.prompts).tolist()),
            **({"rows_dir": str(Path(cell.rows_dir).resolve())} if cell.rows_dir else {}),
            "code_version": code_version(),
            "wall_s": result.wall_s,
            **({"extra": result.extra} if result.extra else {}),
        },
    }


@dataclass
class RunSummary:
    """What a run did: cells planned, already stored (skipped), computed now, and seconds."""

    planned: int
    skipped: int
    computed: int
    wall_s: float
    computed_ids: list[str] = field(default_factory=list)


def _timed(evaluate: Evaluator, cell: Cell) -> CellResult:
    t0 = time.perf_counter()
    result = evaluate(cell)
    if not result.wall_s:
        result.wall_s = time.perf_counter() - t0
    return result


_RAY_STARTED_HERE = False


def ensure_ray(address: str | None = None, num_cpus: int = 2) -> Any:
    """Connect to Ray once per process: ``address`` (an existing cluster) or a local instance."""
    global _RAY_STARTED_HERE
    try:
        import ray
    except ImportError as e:
        raise SweepError(
            "executor 'ray' needs Ray: `pip install 'ldmscale[ray]'` (or use --executor serial)"
        ) from e
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
            _RAY_STARTED_HERE = True
    return ray


def run_cells(
    cells: Sequence[Cell],
    store: ResultsStore,
    evaluate: Evaluator | None = None,
    executor: str = "serial",
    address: str | None = None,
    num_cpus: int = 2,
    progress: bool = True,
    desc: str = "cells",
) -> RunSummary:
    """Evaluate the cells not yet in ``store`` and write each one as it completes.

    The driver is the only writer. On an evaluator error the cells finished so far stay
    stored and the error is raised (with the cell named); rerunning resumes.
    """
    from tqdm import tqdm

    evaluate = evaluate or evaluate_cell
    t0 = time.perf_counter()
    done = store.cell_ids()
    pending = [c for c in cells if c.cell_id not in done]
    summary = RunSummary(len(cells), len(cells) - len(pending), 0, 0.0)
    if evaluate is evaluate_cell and pending:
        prepare_metrics(pending[0].protocol, progress)
    bar = tqdm(total=len(pending), desc=desc, unit="cell", disable=not progress or not pending)

    def finish(cell: Cell, result: CellResult) -> None:
        if store.put(cell_row(cell, result)):
            summary.computed += 1
            summary.computed_ids.append(cell.cell_id)
        bar.set_postfix_str(cell.describe(), refresh=False)
        bar.update(1)

    try:
        if executor == "serial":
            for cell in pending:
                try:
                    result = _timed(evaluate, cell)
                except Exception as e:
                    raise SweepError(f"cell {cell.describe()} ({cell.cell_id}) failed: {e}") from e
                finish(cell, result)
        elif executor == "ray":
            _run_ray(pending, evaluate, address, num_cpus, finish)
        else:
            raise SweepError(f"unknown executor {executor!r}; choose from {list(EXECUTORS)}")
    finally:
        bar.close()
    summary.wall_s = time.perf_counter() - t0
    return summary


def _run_ray(
    pending: Sequence[Cell],
    evaluate: Evaluator,
    address: str | None,
    num_cpus: int,
    finish: Callable[[Cell, CellResult], None],
) -> None:
    if not pending:
        return
    ray = ensure_ray(address, num_cpus)
    remote = ray.remote(num_cpus=1, max_retries=0)(_timed)
    fn_ref = ray.put(evaluate)
    futures = {remote.remote(fn_ref, cell): cell for cell in pending}
    remaining = list(futures)
    try:
        while remaining:
            ready, remaining = ray.wait(remaining, num_returns=1)
            cell = futures[ready[0]]
            try:
                result = ray.get(ready[0])
            except Exception as e:
                raise SweepError(f"cell {cell.describe()} ({cell.cell_id}) failed: {e}") from e
            finish(cell, result)
    finally:
        for ref in remaining:
            ray.cancel(ref, force=True)


def run_sweep(
    cfg: SweepConfig,
    store: ResultsStore | None = None,
    evaluate: Evaluator | None = None,
    progress: bool = True,
    plan: Plan | None = None,
    settings: Iterable[Sequence[Any]] | None = None,
) -> RunSummary:
    """Plan ``cfg`` and evaluate the cells missing from the store (``cfg.store`` by default).

    The plan is ``plan`` when given, else the explicit ``settings`` (:func:`plan_cells`) when
    given, else the full grid (:func:`plan_sweep`). Same store, resume and executor either way.
    """
    if plan is not None and settings is not None:
        raise SweepError("run_sweep: pass a plan or settings, not both")
    if plan is None:
        plan = plan_sweep(cfg) if settings is None else plan_cells(cfg, settings)
    own = store is None
    store = ResultsStore(cfg.store) if own else store
    try:
        return run_cells(
            plan.cells, store, evaluate, cfg.executor, cfg.address, cfg.num_cpus, progress
        )
    finally:
        if own:
            store.close()


# --------------------------------------------------------------------------------------
# Dry run: counts and a calibrated time estimate
# --------------------------------------------------------------------------------------


@dataclass
class Estimate:
    """A plan's cost: cells, images and UNet evaluations (all / still missing), and seconds."""

    cells: int
    pending: int
    images: int
    unet_evals: int
    pending_unet_evals: int
    seconds: float
    metric_seconds: float
    per_model: dict[str, dict[str, float]]
    notes: list[str]


def calibrate_model(model: ModelInfo, batch_size: int, repeats: int = 2) -> dict[str, float]:
    """Seconds for one UNet forward at ``batch_size`` and at ``2 x batch_size`` (CFG), and one
    VAE decode of ``batch_size`` latents, timed on this machine with random weights of the
    model's architecture."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    folder = Path(model.path)
    unet_cfg = UNet2DConditionModel.load_config(folder / "unet")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        unet = UNet2DConditionModel.from_config(unet_cfg).eval()
    size = unet.config.sample_size
    h, w = (size, size) if isinstance(size, int) else size
    ch = unet.config.in_channels
    ctx_dim = unet.config.cross_attention_dim
    ctx_len = int((model.config.get("unet_spec") or {}).get("context_len", 77))
    if (model.config.get("text_encoder") or {}).get("max_length"):
        ctx_len = int(model.config["text_encoder"]["max_length"])

    def time_unet(b: int) -> float:
        x = torch.randn(b, ch, h, w)
        ctx = torch.randn(b, ctx_len, ctx_dim)
        t = torch.full((b,), 500)
        with torch.inference_mode():
            unet(x, t, encoder_hidden_states=ctx)  # warm-up
            t0 = time.perf_counter()
            for _ in range(repeats):
                unet(x, t, encoder_hidden_states=ctx)
        return (time.perf_counter() - t0) / repeats

    out = {"unet_s": time_unet(batch_size), "unet_cfg_s": time_unet(2 * batch_size)}
    out["vae_s"] = 0.0
    if (folder / "vae" / "config.json").is_file():
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae")).eval()
        z = torch.randn(batch_size, vae.config.latent_channels, h, w)
        with torch.inference_mode():
            vae.decode(z)
            t0 = time.perf_counter()
            vae.decode(z)
        out["vae_s"] = time.perf_counter() - t0
    return out


def estimate_plan(
    plan: Plan,
    store: ResultsStore | None = None,
    calibrate: bool = True,
    repeats: int = 2,
    calibrator: Callable[[ModelInfo, int, int], dict[str, float]] | None = None,
) -> Estimate:
    """Count the plan's work and, with ``calibrate``, estimate its serial wall time from a few
    timed UNet forwards per model at the sweep's batch size, plus a rough metric cost."""
    done = store.cell_ids() if store is not None else set()
    pending = [c for c in plan.cells if c.cell_id not in done]
    calibrator = calibrator or calibrate_model
    timings: dict[str, dict[str, float]] = {}
    per_model: dict[str, dict[str, float]] = {}
    seconds = metric_seconds = 0.0
    for cell in pending:
        m = cell.model
        if calibrate and m.hash not in timings:
            timings[m.hash] = calibrator(m, plan.context.batch_size, repeats)
        entry = per_model.setdefault(m.name, {"cells": 0, "unet_evals": 0, "seconds": 0.0})
        entry["cells"] += 1
        entry["unet_evals"] += cell.unet_evals
        metric_s = cell.n_images * sum(
            METRIC_SECONDS_PER_IMAGE.get(name, DEFAULT_METRIC_SECONDS)
            for name in cell.protocol.get("metrics", [])
        )
        metric_seconds += metric_s
        if calibrate:
            t = timings[m.hash]
            batches = math.ceil(cell.n_images / plan.context.batch_size)
            per_batch = cell.steps * (t["unet_cfg_s"] if cell.cfg else t["unet_s"]) + t["vae_s"]
            entry["seconds"] += batches * per_batch + metric_s
            entry.update({f"calib_{k}": v for k, v in timings[m.hash].items()})
            seconds += batches * per_batch + metric_s
    notes = list(plan.notes)
    if not calibrate:
        notes.append("time not estimated (calibration off)")
    return Estimate(
        cells=len(plan.cells),
        pending=len(pending),
        images=plan.images,
        unet_evals=plan.unet_evals,
        pending_unet_evals=sum(c.unet_evals for c in pending),
        seconds=seconds,
        metric_seconds=metric_seconds,
        per_model=per_model,
        notes=notes,
    )


def _fmt_seconds(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def format_estimate(est: Estimate, batch_size: int) -> str:
    """A human-readable plan summary (what ``ldmscale sweep --dry-run`` prints)."""
    lines = [
        f"cells: {est.cells} ({est.pending} not yet in the store)",
        f"images: {est.images}",
        f"UNet evaluations: {est.unet_evals:,} ({est.pending_unet_evals:,} still to run); "
        "one = one image through one step, doubled with CFG",
    ]
    if est.seconds:
        lines.append(
            f"estimated time (serial, this machine, batch {batch_size}): "
            f"{_fmt_seconds(est.seconds)}, of which metrics ~{_fmt_seconds(est.metric_seconds)}"
        )
        for name, e in est.per_model.items():
            lines.append(
                f"  {name}: {int(e['cells'])} cells, {int(e['unet_evals']):,} UNet evals, "
                f"~{_fmt_seconds(e['seconds'])} (UNet forward {e.get('calib_unet_s', 0):.3f} s / "
                f"{e.get('calib_unet_cfg_s', 0):.3f} s with CFG at batch {batch_size})"
            )
    for n in est.notes:
        lines.append(f"note: {n}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# The real evaluator: sample -> metrics -> bootstrap CI
# --------------------------------------------------------------------------------------


_MODELS: dict[str, Any] = {}
_METRIC_CACHE: dict[tuple, Any] = {}
FEATURE_METRICS = ("fd_probe", "fid", "fd_inception", "fd_effnet", "kid")
SCORE_METRICS = ("alignment", "clip_score")
KNOWN_METRICS = FEATURE_METRICS + SCORE_METRICS


def _load_model_cached(model: ModelInfo) -> Any:
    if model.hash not in _MODELS:
        from ldmscale.model import load_model

        _MODELS.clear()  # one model resident per process: cells are grouped by model
        _MODELS[model.hash] = load_model(model.path)
    return _MODELS[model.hash]


def evaluate_cell(cell: Cell) -> CellResult:
    """The built-in evaluator: sample the cell with per-image seeds
    (``ldmscale.sampling.generate``), score the images with the protocol's metrics, and attach
    percentile bootstrap CIs over the generated images.

    The scheduler runs with ``cell.timestep_spacing`` (set explicitly, also for ``leading``).
    With ``cell.rows_dir`` set, the leading images already scored for the cell's family (same
    model, sampler config, protocol and seed set, any image count) are reused from the row cache
    and only the rest are sampled; ``extra["reused_images"]`` says how many.
    """
    from ldmscale import rowcache
    from ldmscale.sampling import SamplerConfig, generate

    t0 = time.perf_counter()
    n = cell.n_images
    cached = rowcache.load_rows(cell.rows_dir, cell.family) if cell.rows_dir else None
    m = rowcache.reusable(cached, cell.prompts, cell.seeds)
    rows = cached
    if m < n:
        model = _load_model_cached(cell.model)
        cfg = SamplerConfig(
            name=cell.sampler,
            steps=cell.steps,
            guidance=cell.guidance,
            timestep_spacing=cell.timestep_spacing,
        )
        prompts, seeds = list(cell.prompts[m:]), list(cell.seeds[m:])
        result = generate(model, prompts, seeds, cfg, batch_size=cell.batch_size, progress=False)
        new_rows, fingerprints = metric_rows(result.images, prompts, cell.protocol)
        meta = {
            "nfe": float(result.nfe),
            "flops_per_image": float(result.flops) / len(seeds),
            "norm_cost": float(model.norm_cost),
            "sampling_cost": float(result.sampling_cost),
            "feature_networks": fingerprints,
        }
        new = rowcache.CachedRows(
            np.asarray(seeds, np.int64), rowcache.prompt_keys(prompts), new_rows, meta
        )
        rows = rowcache.extend(cached, m, new)
        if cell.rows_dir:
            rowcache.save_rows(cell.rows_dir, cell.family, rows)
    assert rows is not None
    metrics = score_rows({k: v[:n] for k, v in rows.rows.items()}, cell.protocol, seed=cell.seed0)
    meta = rows.meta
    return CellResult(
        metrics=metrics,
        nfe=meta["nfe"],
        flops=meta["flops_per_image"],
        norm_cost=meta["norm_cost"],
        wall_s=time.perf_counter() - t0,
        extra={
            "sampling_cost": meta["sampling_cost"],
            "feature_networks": meta["feature_networks"],
            **({"reused_images": m} if cell.rows_dir else {}),
        },
    )


def prepare_metrics(protocol: dict[str, Any], progress: bool = False) -> None:
    """Build what the metrics need once, in the driver (the probe, reference statistics), so
    that parallel workers find it in the disk cache instead of each building it."""
    for name in protocol.get("metrics", []):
        if name not in KNOWN_METRICS:
            raise SweepError(f"unknown metric {name!r}; known metrics: {list(KNOWN_METRICS)}")
        if name in FEATURE_METRICS:
            _reference(name, protocol, progress=progress)
        elif name == "alignment":
            _probe(protocol)
        elif name == "clip_score":
            _clip_model(protocol)


def compute_metrics(
    images: np.ndarray, prompts: list[str], protocol: dict[str, Any], seed: int = 0
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Score uint8 images ``[N, H, W, 3]`` with the protocol's metrics.

    Returns ``({name: {"value", "lo", "hi", "n"}}, {"feature_networks": fingerprints})``; the
    CI is a percentile bootstrap over the generated images (reference held fixed), with
    ``protocol["bootstrap"]`` resamples at ``protocol["ci_level"]``.

    Metrics: ``fd_probe`` (Fréchet distance on the shapes probe's features; not FID),
    ``fid``/``fd_inception`` (Inception), ``fd_effnet`` (EfficientNet-Lite0; not FID),
    ``kid`` (Inception, mean over subsets),
    ``alignment`` (fraction of images whose probe read-out matches the caption; shapes only),
    ``clip_score`` (raw CLIP cosine of image and prompt; needs ``protocol["clip_model"]``).
    """
    rows, fingerprints = metric_rows(images, prompts, protocol)
    return score_rows(rows, protocol, seed), {"feature_networks": fingerprints}


def metric_rows(
    images: np.ndarray, prompts: list[str], protocol: dict[str, Any]
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Per-image rows of each metric (features ``[N, D]`` or values ``[N]``, float64) and the
    fingerprint of the network behind each; see :func:`compute_metrics` for the metrics."""
    from ldmscale.metrics.common import extract_features

    rows: dict[str, np.ndarray] = {}
    fingerprints: dict[str, str] = {}
    for name in protocol["metrics"]:
        if name in FEATURE_METRICS:
            extractor, _ = _reference(name, protocol)
            fingerprints[name] = extractor.fingerprint()
            rows[name] = extract_features(images, extractor)
        elif name == "alignment":
            from ldmscale.metrics.alignment import text_alignment

            probe = _probe(protocol)
            fingerprints[name] = probe.fingerprint()
            rows[name] = text_alignment(images, probe, captions=prompts).hits.astype(np.float64)
        elif name == "clip_score":
            from ldmscale.metrics.clip_score import clip_score

            clip_model = _clip_model(protocol)
            rows[name] = clip_score(images, prompts, clip_model).per_image
            fingerprints[name] = clip_model
        else:
            raise SweepError(f"unknown metric {name!r}; known metrics: {list(KNOWN_METRICS)}")
    return rows, fingerprints


@overload
def metric_statistic(
    name: str, protocol: dict[str, Any], rows: None = None, *, seed: int = 0
) -> Callable[[np.ndarray], float]: ...
@overload
def metric_statistic(
    name: str, protocol: dict[str, Any], rows: np.ndarray, *, seed: int = 0
) -> float: ...
def metric_statistic(
    name: str, protocol: dict[str, Any], rows: np.ndarray | None = None, *, seed: int = 0
) -> Callable[[np.ndarray], float] | float:
    """One metric's value from per-image rows (:func:`metric_rows`, :func:`cell_rows`).

    ``metric_statistic(name, protocol, rows) -> float``: the value of metric ``name`` under the
    store row's ``protocol`` for ``rows`` (features ``[n, D]`` or values ``[n]``).
    ``metric_statistic(name, protocol) -> statistic`` returns the function ``statistic(rows) ->
    float`` instead (what a bootstrap calls many times). The statistic is the Fréchet distance
    to the protocol's reference (:func:`fast_frechet`, built once per reference and process),
    KID (mean over subsets, subsets drawn with ``seed``), or the mean of per-image values
    (alignment, CLIP score). Feature metrics load the protocol's reference statistics (cached
    on disk after the first sweep). For a paired comparison of two cells of one protocol, call
    the statistic on the same resampled image indices of both cells' rows.
    """
    if name not in KNOWN_METRICS:
        raise SweepError(f"unknown metric {name!r}; known metrics: {list(KNOWN_METRICS)}")
    statistic = _statistic(name, protocol, seed)
    return statistic if rows is None else float(statistic(rows))


def _statistic(name: str, protocol: dict[str, Any], seed: int) -> Callable[[np.ndarray], float]:
    if name not in FEATURE_METRICS:
        return lambda rows: float(np.mean(rows))
    _, ref = _reference(name, protocol)
    if name == "kid":
        from ldmscale.metrics.kid import kid

        return lambda rows: kid(rows, ref.features, seed=seed).mean
    key = (name, id(ref))
    if key not in _FRECHET:  # one eigendecomposition of the reference covariance (2 s at 2,048-d)
        _FRECHET[key] = fast_frechet(ref.stats.mean, ref.stats.cov)
    return _FRECHET[key]


def cell_rows(
    row: dict[str, Any], rows_dir: str | Path | None = None
) -> dict[str, np.ndarray] | None:
    """A stored cell's per-image metric rows from the row cache, or None if they are not there.

    ``row`` is a results-store row (:meth:`ldmscale.store.ResultsStore.rows`); ``rows_dir`` the
    row-cache folder, by default the one its provenance names (``provenance["rows_dir"]``,
    written by :func:`cell_row` when the sweep had one; the adaptive search's default is
    ``<store>.rows``). Returns ``{metric: array}`` holding the cell's first ``n_images`` images
    in seed order (image ``i`` = prompt ``i`` with seed ``seed0 + i``: row ``i`` of two cells
    of one sweep is the same prompt and seed, so they pair). None when the folder or family
    file is missing, holds fewer images, or its seeds or prompts differ from the row's.
    Values: feed them to :func:`metric_statistic` with ``row["protocol"]``.
    """
    from ldmscale.rowcache import family_key, load_rows

    prov = row.get("provenance") or {}
    directory = rows_dir if rows_dir is not None else prov.get("rows_dir")
    if not directory or not Path(directory).is_dir():
        return None
    n = int(row["n_images"])
    seeds = prov.get("seeds")
    seed0 = row.get("seed0")
    if seed0 is None:
        seed0 = int(seeds[0]) if seeds else 0
    spacing = row.get("timestep_spacing") or DEFAULT_SPACING
    sampler = sampler_identity(row["sampler"], row["steps"], row["guidance"], spacing)
    family = family_key(row["model_hash"], sampler, row.get("protocol") or {}, int(seed0))
    cached = load_rows(directory, family)
    if cached is None or len(cached) < n:
        return None
    expected = np.asarray(seeds[:n] if seeds else range(seed0, seed0 + n), np.int64)
    if len(expected) != n or not np.array_equal(cached.seeds[:n], expected):
        return None
    keys_hash = prov.get("prompt_keys_hash")
    if keys_hash and hash_json(cached.prompt_keys[:n].tolist()) != keys_hash:
        return None
    return {k: np.asarray(v[:n]) for k, v in cached.rows.items()}


_FRECHET: dict[tuple[str, int], Callable[[np.ndarray], float]] = {}


def score_rows(
    rows: dict[str, np.ndarray], protocol: dict[str, Any], seed: int = 0
) -> dict[str, dict[str, float]]:
    """Each metric's value with its bootstrap CI over the images, from :func:`metric_rows`."""
    from ldmscale.metrics.bootstrap import bootstrap_ci

    n_boot = int(protocol.get("bootstrap", 0))
    alpha = 1.0 - float(protocol.get("ci_level", 0.95))
    out: dict[str, dict[str, float]] = {}
    for name in protocol["metrics"]:
        r = rows[name]
        statistic = metric_statistic(name, protocol, seed=seed)
        if n_boot >= 2 and len(r) >= 2:
            ci = bootstrap_ci(r, statistic, n_boot=n_boot, seed=seed, alpha=alpha)
            value, lo, hi = ci.estimate, ci.low, ci.high
        else:
            value = lo = hi = float(statistic(r))
        out[name] = {"value": value, "lo": lo, "hi": hi, "n": int(len(r))}
    return out


def fast_frechet(ref_mean: np.ndarray, ref_cov: np.ndarray) -> Callable[[np.ndarray], float]:
    """A Fréchet distance to a fixed reference, fast enough to bootstrap.

    ``tr sqrt(S1 S2) = sum sqrt(eig(A S1 A))`` with ``A = S2^(1/2)`` (``S1 S2`` and ``A S1 A``
    share eigenvalues), so after one eigendecomposition of the reference covariance each
    resample costs a symmetric ``eigvalsh`` instead of a general matrix square root. With fewer
    images ``n`` than feature dimensions ``D`` (64 images of 2,048-d Inception features), ``A S1
    A = Y^T Y / (n - 1)`` with ``Y = Xc A`` has the nonzero eigenvalues of the ``n x n`` matrix
    ``Y Y^T / (n - 1)``, so the cost is ``O(n D^2)``, not ``O(D^3)`` (0.05 s instead of 1.6 s
    at n = 64, D = 2,048). Agrees with ``ldmscale.metrics.frechet`` to rounding.
    """
    mu2 = np.asarray(ref_mean, np.float64)
    s2 = np.asarray(ref_cov, np.float64)
    w, v = np.linalg.eigh((s2 + s2.T) / 2)
    a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    tr2 = float(np.trace(s2))
    dim = len(mu2)

    def statistic(feats: np.ndarray) -> float:
        f = np.asarray(feats, np.float64)
        n = len(f)
        mu1 = f.mean(0)
        diff = mu1 - mu2
        if n < 2:
            return float(diff @ diff + tr2)
        xc = f - mu1
        tr1 = float((xc * xc).sum()) / (n - 1)
        if n - 1 < dim:
            y = xc @ a
            m = (y @ y.T) / (n - 1)
        else:
            s1 = (xc.T @ xc) / (n - 1)
            m = a @ s1 @ a
        eig = np.linalg.eigvalsh((m + m.T) / 2)
        return float(diff @ diff + tr1 + tr2 - 2 * np.sqrt(np.clip(eig, 0, None)).sum())

    return statistic


def _dataset(protocol: dict[str, Any]) -> dict[str, Any]:
    ref = protocol.get("reference") or {}
    if not ref.get("dataset"):
        raise SweepError(
            "the metrics need a reference dataset: set `dataset` in the sweep config (its "
            "validation split is the reference set and, for shapes, trains the probe)"
        )
    return ref


def _probe(protocol: dict[str, Any]) -> Any:
    ref = _dataset(protocol)
    key = ("probe", ref["dataset"], str(sorted((protocol.get("probe") or {}).items())))
    if key not in _METRIC_CACHE:
        from ldmscale.metrics.probe import ProbeConfig, probe_for_dataset

        steps = int((protocol.get("probe") or {}).get("steps", ProbeConfig.steps))
        _METRIC_CACHE[key] = probe_for_dataset(ref["dataset"], ProbeConfig(steps=steps))
    return _METRIC_CACHE[key]


def _clip_model(protocol: dict[str, Any]) -> str:
    """The protocol's local CLIP folder for ``clip_score``; a SweepError if unset or not one."""
    path = protocol.get("clip_model")
    if not path:
        raise SweepError(
            "the clip_score metric needs a CLIP model: set `clip_model` in the sweep config "
            "(or pass --clip-model) to a local transformers CLIP folder (CLIPModel + processor "
            "saved with save_pretrained); nothing is downloaded"
        )
    if not (Path(path).expanduser() / "config.json").is_file():
        raise SweepError(
            f"clip_model {path} is not a CLIP model folder (no config.json); give the folder "
            "written by CLIPModel.save_pretrained + CLIPProcessor.save_pretrained"
        )
    return str(path)


def _reference(name: str, protocol: dict[str, Any], progress: bool = False) -> tuple[Any, Any]:
    """(feature extractor, cached reference set) of a feature metric; ``progress`` shows a bar
    while the reference features are computed (the driver's first call, before any cell)."""
    ref = _dataset(protocol)
    key = (name, ref["dataset"], ref["split"], ref["resolution"])
    if key not in _METRIC_CACHE:
        from ldmscale.metrics.reference import reference_stats

        if name == "fd_probe":
            extractor = _probe(protocol)
        elif name == "fd_effnet":
            from ldmscale.metrics.effnet import EffNetFeatures

            extractor = EffNetFeatures()
        else:
            from ldmscale.metrics.fid import InceptionFeatures

            extractor = InceptionFeatures()
        refset = reference_stats(
            ref["dataset"],
            extractor,
            split=ref["split"],
            resolution=ref["resolution"],
            keep_features=name == "kid",
            progress=progress,
        )
        _METRIC_CACHE[key] = (extractor, refset)
    return _METRIC_CACHE[key]


def iter_groups(cells: Iterable[Cell]) -> dict[tuple[str, str, int, str], list[Cell]]:
    """Cells keyed by their (model hash, sampler, steps, spacing) group, guidance ascending."""
    groups: dict[tuple[str, str, int, str], list[Cell]] = {}
    for c in cells:
        groups.setdefault(c.group, []).append(c)
    for v in groups.values():
        v.sort(key=lambda c: c.guidance)
    return groups
