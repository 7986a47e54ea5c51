"""The study's stages, in order: each a :class:`Stage` (name, key, is_done, run).

A stage's *inputs* are exactly the settings its outputs depend on, including those of the
stages it builds on (the autoencoder's include the data's; a width's training run includes
both); its *key* is their hash. ``is_done`` says whether its outputs are complete, ``run``
makes (or finishes) them. Stages that write nothing the rest depend on, or check their own
outputs part by part (the sample grids, the floors' cache, the report), may never be done
before they run; their run is then cheap when nothing changed.

| stage | unit | outputs | done when |
| --- | --- | --- | --- |
| data | | ``data/shapes/`` (owned) or nothing (``--data``: checked) | ``dataset.json`` matches |
| autoencoder | | ``autoencoder/`` (owned) or nothing (``vae``: checked) | ``training.json`` exists |
| train | ``c<c>`` | ``runs/c<c>/`` (owned) | ``model/ldmscale_model.json`` exists |
| samples | | ``samples/c<c>/`` | (run: a grid whose ``samples.json`` matches is kept) |
| sweep, confirm, checkpoints | | cells in ``results.sqlite`` | every planned cell is stored |
| floors | | ``floors.json`` | (run: reused while protocol, N and autoencoder hash match) |
| report | | ``report/`` | (always rebuilt) |

*Owned* outputs are guarded by :mod:`ldmscale.study.record`. A new stage is one more
:class:`Stage` in :func:`build_stages` (and its name in ``STAGES``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ldmscale import cost
from ldmscale.io import hash_json
from ldmscale.study.config import TRAIN_FIELDS_SET_BY_STUDY, StudyConfig
from ldmscale.study.context import CONFIRM_SEED0, StudyRun

STAGES = (
    "data",
    "autoencoder",
    "train",
    "samples",
    "sweep",
    "confirm",
    "checkpoints",
    "floors",
    "report",
)


@dataclass(frozen=True)
class Stage:
    """One stage (or one unit of it: the training run of one width).

    name: the ``--stages`` name. unit: which part (``c8``), or ``""``. inputs(cfg): the plain
    JSON of exactly what the outputs depend on. is_done(run), run(run): see the module
    docstring. outputs(cfg): the folder the stage owns (None: nothing owned).
    """

    name: str
    inputs: Callable[[StudyConfig], dict[str, Any]]
    is_done: Callable[[StudyRun], bool]
    run: Callable[[StudyRun], None]
    unit: str = ""
    outputs: Callable[[StudyConfig], Path | None] | None = None

    @property
    def id(self) -> str:
        """``name`` or ``name/unit``: the stage's entry in ``stages.json``."""
        return f"{self.name}/{self.unit}" if self.unit else self.name

    def key(self, cfg: StudyConfig) -> str:
        """The hash of the stage's inputs under ``cfg``."""
        return hash_json(self.inputs(cfg))


def never(run: StudyRun) -> bool:
    """``is_done`` of a stage that always runs (its run checks its own outputs)."""
    return False


# ----------------------------------------------------------------------------------- data


def data_inputs(cfg: StudyConfig) -> dict[str, Any]:
    """The data stage's inputs: the ``--data`` folder and resolution, or the shapes settings."""
    if cfg.data:
        return {"data": str(cfg.data), "resolution": cfg.resolution}
    shapes = ("n_train", "n_val", "resolution", "seed", "max_objects")
    return {"shapes": {k: getattr(cfg, k) for k in shapes}}


def _data_done(run: StudyRun) -> bool:
    from ldmscale.data.shapes import dataset_info

    cfg = run.cfg
    path = cfg.data_dir() / "dataset.json"
    if cfg.data or not path.is_file():
        return False  # a user's folder is checked (every image decoded) on every run
    want = dataset_info(cfg.n_train, cfg.n_val, cfg.resolution, cfg.seed, cfg.max_objects)
    try:
        return json.loads(path.read_text()) == want
    except json.JSONDecodeError:
        return False


def _data_run(run: StudyRun) -> None:
    from ldmscale.data import load_dataset
    from ldmscale.data.shapes import generate_shapes

    cfg = run.cfg
    if cfg.data:  # decode every image now: a bad file fails here, not in training
        for split in ("train", "validation"):
            load_dataset(cfg.data, split=split, resolution=cfg.resolution)
        return
    generate_shapes(
        cfg.data_dir(),
        cfg.n_train,
        cfg.n_val,
        resolution=cfg.resolution,
        seed=cfg.seed,
        max_objects=cfg.max_objects,
    )


# ---------------------------------------------------------------------------- autoencoder


def autoencoder_inputs(cfg: StudyConfig) -> dict[str, Any]:
    """The data's inputs and the autoencoder's config (or the given ``vae`` folder)."""
    own = {"vae": str(cfg.vae)} if cfg.vae else cfg.autoencoder.to_dict()
    return {"data": data_inputs(cfg), "autoencoder": own}


def _autoencoder_done(run: StudyRun) -> bool:
    from ldmscale.autoencoder import read_training_record

    return not run.cfg.vae and read_training_record(run.cfg.vae_dir()) is not None


def _autoencoder_run(run: StudyRun) -> None:
    from ldmscale.autoencoder import load_autoencoder, read_training_record, train_autoencoder
    from ldmscale.data import load_dataset

    cfg = run.cfg
    if cfg.vae:
        load_autoencoder(cfg.vae)  # fails early, naming the problem, if it is not usable
        run.log(f"[study]   using the autoencoder at {cfg.vae}")
        return
    train_ds = load_dataset(cfg.data_dir(), split="train", resolution=cfg.resolution)
    val_ds = load_dataset(cfg.data_dir(), split="validation", resolution=cfg.resolution)
    train_autoencoder(train_ds, val_ds, cfg.autoencoder, cfg.vae_dir(), progress=run.progress)
    record = read_training_record(cfg.vae_dir()) or {}
    run.log(f"[study]   autoencoder val PSNR {record.get('val_psnr_db', float('nan')):.2f} dB")


# ---------------------------------------------------------------------------------- train


def train_inputs(cfg: StudyConfig, c: int) -> dict[str, Any]:
    """Width ``c``'s run: the autoencoder's inputs, the text encoder, the training template
    (without the fields the study sets per width) and ``c``."""
    template = cfg.train.to_dict()
    train = {k: v for k, v in template.items() if k not in TRAIN_FIELDS_SET_BY_STUDY}
    return {
        **autoencoder_inputs(cfg),
        "text_encoder": cfg.text_encoder.to_dict(),
        "train": train,
        "c": c,
    }


def models_inputs(cfg: StudyConfig) -> dict[str, Any]:
    """The inputs of every width's model (what the stages after training build on)."""
    return {f"c{c}": train_inputs(cfg, c) for c in cfg.widths}


def _train_done(c: int, run: StudyRun) -> bool:
    from ldmscale.modelfolder import MODEL_FILE

    return (run.cfg.run_dir(c) / "model" / MODEL_FILE).is_file()


def _train_run(c: int, run: StudyRun) -> None:
    from ldmscale.train import train

    run.log(f"[study]   training c={c} for {run.cfg.train.steps} steps")
    train(run.cfg.train_config(c), progress=run.progress)


# -------------------------------------------------------------------------------- samples


def _samples_inputs(cfg: StudyConfig) -> dict[str, Any]:
    preview = {"preview": cfg.preview.to_dict(), "prompts": cfg.preview_prompts, "seed": cfg.seed}
    return {"models": models_inputs(cfg), **preview}


def _samples_run(run: StudyRun) -> None:
    """A captioned grid per width at (about) equal sampling cost: the largest width gets
    ``preview.steps`` steps; each other width the step count with the nearest cost."""
    from ldmscale.data import load_dataset
    from ldmscale.model import load_model
    from ldmscale.sampling import generate, read_samples, save_samples

    cfg = run.cfg
    val = load_dataset(cfg.data_dir(), split="validation", resolution=cfg.resolution)
    prompts = list(val.captions[: cfg.preview_prompts])
    seeds = [cfg.seed + i for i in range(len(prompts))]
    models = {c: load_model(cfg.run_dir(c) / "model") for c in cfg.widths}
    budget = cost.sampling_cost(models[max(cfg.widths)].norm_cost, cfg.preview.steps)
    run.result.samples = []
    for c, model in models.items():
        sampler = cfg.preview.replace(steps=max(1, round(budget / model.norm_cost)))
        out = cfg.samples_dir(c)
        run.result.samples.append(out)
        try:
            done = read_samples(out)
            if done.get("sampler") == sampler.to_dict() and done.get("seeds") == seeds:
                continue
        except (FileNotFoundError, ValueError):
            pass
        result = generate(model, prompts, seeds, sampler, progress=run.progress)
        save_samples(result, prompts, out)


# ------------------------------------------------------------------ sweep, confirm, checkpoints


def sweep_inputs(cfg: StudyConfig) -> dict[str, Any]:
    """Every width's model inputs, the data and the sweep template."""
    return {"models": models_inputs(cfg), "data": data_inputs(cfg), "sweep": cfg.sweep.to_dict()}


def _stored(run: StudyRun, plan: Any) -> bool:
    return plan is None or {c.cell_id for c in plan.cells} <= run.stored_ids()


def _sweep_run(run: StudyRun) -> None:
    from ldmscale.sweep import run_sweep

    plan = run.sweep_plan()
    run.log(f"[study]   sweep: {len(plan.cells)} cells -> {run.sweep_cfg.store}")
    summary = run_sweep(run.sweep_cfg, progress=run.progress, plan=plan)
    run.log(f"[study]   computed {len(summary.computed_ids)} cells (the rest were already stored)")


def _confirm_run(run: StudyRun) -> None:
    """Re-evaluate each (model, sampler, spacing, steps) group's optimal-guidance cell on the
    fresh seed set ``CONFIRM_SEED0`` (same prompts), for unbiased values at the optima."""
    from ldmscale.sweep import run_sweep

    plan = run.confirm_plan()
    n = len(plan.cells) if plan else 0
    run.log(f"[study]   {n} optimal-guidance cells on fresh seeds from {CONFIRM_SEED0}")
    if plan is not None:
        cfg = run.sweep_cfg.replace(seed0=CONFIRM_SEED0)
        run_sweep(cfg, progress=run.progress, plan=plan)


def _checkpoints_run(run: StudyRun) -> None:
    """Score the kept checkpoints at one fixed setting: the sample metric against training
    compute (the paper's Fig. 3), the convergence signal of each width."""
    from ldmscale.sweep import run_sweep

    plan = run.checkpoint_plan()
    if plan is None:
        run.log("[study]   no kept checkpoints (train.eval_steps is empty)")
        return
    s = run.cfg.checkpoint_sampler
    run.log(f"[study]   {len(plan.cells)} checkpoint cells at {s.name} x{s.steps}, w={s.guidance}")
    run_sweep(run.sweep_cfg, progress=run.progress, plan=plan)


# ---------------------------------------------------------------------------- floors, report


def _floors_run(run: StudyRun) -> None:
    """Real held-out and autoencoder-reconstruction floors at the cells' N (``floors.json``)."""
    from ldmscale.floors import ensure_floors, format_floors

    path = run.cfg.root / "floors.json"
    floors = ensure_floors(path, run.sweep_cfg, run.cfg.vae_dir(), progress=run.progress)
    for line in format_floors(floors).splitlines():
        run.log(f"[study]   {line}")


def _report_inputs(cfg: StudyConfig) -> dict[str, Any]:
    return cfg.replace(out_dir="").to_dict()


def _report_run(run: StudyRun) -> None:
    from ldmscale.study.report import study_report

    run.result.report, run.result.verdict = study_report(run)


def build_stages(cfg: StudyConfig) -> list[Stage]:
    """The study's stages in run order, one training unit per width; the tasks' stages
    (:mod:`ldmscale.study.tasks`) come after the floors, the report last."""
    from ldmscale.study.tasks import tasks_of

    t2i = [
        Stage("data", data_inputs, _data_done, _data_run, outputs=_owned_data),
        Stage(
            "autoencoder",
            autoencoder_inputs,
            _autoencoder_done,
            _autoencoder_run,
            outputs=lambda cfg: None if cfg.vae else cfg.vae_dir(),
        ),
        *(
            Stage(
                "train",
                partial(train_inputs, c=c),
                partial(_train_done, c),
                partial(_train_run, c),
                unit=f"c{c}",
                outputs=partial(_run_dir, c=c),
            )
            for c in cfg.widths
        ),
        Stage("samples", _samples_inputs, never, _samples_run),
        Stage("sweep", sweep_inputs, lambda run: _stored(run, run.sweep_plan()), _sweep_run),
        Stage(
            "confirm",
            lambda cfg: {**sweep_inputs(cfg), "primary_metric": cfg.primary_metric},
            lambda run: _stored(run, run.confirm_plan()),
            _confirm_run,
        ),
        Stage(
            "checkpoints",
            lambda cfg: {**sweep_inputs(cfg), "sampler": cfg.checkpoint_sampler.to_dict()},
            lambda run: _stored(run, run.checkpoint_plan()),
            _checkpoints_run,
        ),
        Stage(
            "floors",
            lambda cfg: {**sweep_inputs(cfg), "autoencoder": autoencoder_inputs(cfg)},
            never,
            _floors_run,
        ),
    ]
    for task in tasks_of(cfg):
        t2i += task.stages(cfg)
    return [*t2i, Stage("report", _report_inputs, never, _report_run)]


def default_stages(cfg: StudyConfig) -> tuple[str, ...]:
    """The stages a run without ``--stages`` runs: every text-to-image stage, or with tasks
    the ones they need, their own and the report."""
    from ldmscale.study.tasks import tasks_of

    tasks = tasks_of(cfg)
    if not tasks:
        return STAGES
    names: list[str] = []
    for task in tasks:
        names += [*task.needs, *task.stage_names(cfg)]
    return tuple(dict.fromkeys([*names, "report"]))


def _owned_data(cfg: StudyConfig) -> Path | None:
    return None if cfg.data else cfg.data_dir()


def _run_dir(cfg: StudyConfig, c: int) -> Path:
    return cfg.run_dir(c)
