"""The study task ``dreambooth`` (the paper's Fig. 6, measured): DreamBooth-fine-tune every
trained width on the shapes subject (a ring, :mod:`ldmscale.data.subject`), with class-prior
preservation and without (the ablation), and score parent, fine-tune and ablation on the same
prompts and seeds (:mod:`ldmscale.metrics.dreambooth`).

Outputs, per width ``c``: ``<out>/dreambooth/c<c>/`` with the runs ``prior/`` and
``ablation/`` (ordinary DreamBooth run folders), ``hits.npz`` (per-image hits of every model
and prompt set: the rows of the paired bootstraps), ``grid.npz`` (each model's images at
the held-out subject prompts, ``subject_<model>``, and at the class prompts,
``class_<model>``) and ``result.json`` (rates with 95% CIs, paired differences, sampling cost,
wall times). The report section is :mod:`ldmscale.report.dreambooth`.
"""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ldmscale.config import ConfigError
from ldmscale.study.tasks import Task

MODELS = ("parent", "prior", "ablation")

#: The tiny preset's options (sized for one core: about 25 min over c8, c16, c32).
TINY = {
    "identifier": "sks",
    "n_subject": 5,
    "steps": 400,
    "lr": 5e-4,
    "prior_images": 64,
    "prior_weight": 1.0,
    "n_per_prompt": 32,
    "n_general": 64,
    "sampler": {"name": "ddim", "steps": 16, "guidance": 2.0, "timestep_spacing": "trailing"},
    "n_boot": 1000,
}
OPTION_KEYS = set(TINY)


def default_options(preset: str) -> dict[str, Any]:
    """Every preset starts from the tiny options (the paper scale has no DreamBooth yet)."""
    return dict(TINY)


def options_of(cfg) -> dict[str, Any]:
    """The task's options in ``cfg`` (defaults filled in), checked."""
    from ldmscale.study.tasks import get_task

    opts = {**TINY, **get_task("dreambooth").options(cfg)}
    unknown = sorted(set(opts) - OPTION_KEYS)
    if unknown:
        raise ConfigError(
            f"task_options.dreambooth: unknown option(s) {unknown}; valid: {sorted(OPTION_KEYS)}"
        )
    return opts


def task_dir(cfg, c: int) -> Path:
    return cfg.root / "dreambooth" / f"c{c}"


def _inputs(cfg, c: int) -> dict[str, Any]:
    from ldmscale.study.stages import train_inputs

    return {"parent": train_inputs(cfg, c=c), "options": options_of(cfg)}


def _done(c: int, run) -> bool:
    return (task_dir(run.cfg, c) / "result.json").is_file()


def _run(c: int, run) -> None:
    """Fine-tune width ``c`` with and without the prior, score all three models, save."""
    from ldmscale.data import load_dataset
    from ldmscale.data.subject import SUBJECT, write_subject
    from ldmscale.dreambooth import DreamBoothConfig, dreambooth
    from ldmscale.io import atomic_write_json
    from ldmscale.metrics.dreambooth import evaluate_shapes, shapes_prompt_sets, summarize
    from ldmscale.metrics.probe import probe_for_dataset
    from ldmscale.model import load_model
    from ldmscale.sampling import SamplerConfig

    cfg, opts = run.cfg, options_of(run.cfg)
    out = task_dir(cfg, c)
    subject = write_subject(cfg.root / "dreambooth" / "subject", opts["n_subject"], cfg.resolution)
    info = json.loads((subject / "subject.json").read_text())
    base = DreamBoothConfig(
        model=str(cfg.run_dir(c) / "model"), subject=str(subject), identifier=opts["identifier"],
        out=str(out / "prior"), class_prompts=tuple(info["class_prompts"]),
        train_data=str(cfg.data_dir()), steps=opts["steps"], lr=opts["lr"],
        prior_images=opts["prior_images"], prior_weight=opts["prior_weight"], seed=cfg.seed,
    )  # fmt: skip
    walls: dict[str, float] = {}
    models = {"parent": cfg.run_dir(c) / "model"}
    for name, dcfg in (("prior", base), ("ablation", base.replace(out=str(out / "ablation"),
                                                                  prior_images=0))):  # fmt: skip
        t0 = time.time()
        run.log(f"dreambooth c{c}: fine-tune ({name})")
        models[name] = dreambooth(dcfg, progress=run.progress)
        walls[f"finetune_{name}"] = round(time.time() - t0, 1)
    general = load_dataset(cfg.data_dir(), split="validation", validate=False).captions
    sets = shapes_prompt_sets(info, general[: opts["n_general"]], opts["n_per_prompt"])
    probe = probe_for_dataset(cfg.data_dir(), progress=run.progress)
    sampler = SamplerConfig.from_dict(opts["sampler"])
    hits, grids, result = {}, {}, {"width": c, "options": opts, "models": {}}
    for name in MODELS:
        t0 = time.time()
        model = load_model(models[name])
        h, images = evaluate_shapes(model, sets, opts["identifier"], probe, sampler, SUBJECT)
        walls[f"eval_{name}"] = round(time.time() - t0, 1)
        hits.update({f"{name}/{k}": v for k, v in h.items()})
        result["models"][name] = summarize(h, opts["n_boot"])
        # Fig. 6: 4 images per held-out prompt; the leak figure: one image per class prompt.
        grids[f"subject_{name}"] = images["subject"][:: max(1, opts["n_per_prompt"] // 4)]
        grids[f"class_{name}"] = images["class"][:: opts["n_per_prompt"]]
        result["norm_cost"] = model.norm_cost  # the same for the three (one width)
    result["sampling_cost"] = result["norm_cost"] * sampler.steps
    result["paired"] = paired_readings(hits, opts["n_boot"])
    result["wall_seconds"] = walls
    np.savez_compressed(out / "hits.npz", **hits)
    np.savez_compressed(out / "grid.npz", **grids)
    atomic_write_json(out / "result.json", result)


#: The paired readings of one width: (name, set, model A, model B): A - B on the same images.
PAIRS = (
    ("subject_gain", "subject", "prior", "parent"),
    ("prompt_change", "prompt", "prior", "parent"),
    ("general_change", "general", "prior", "parent"),
    ("leak_prior_minus_ablation", "leak", "prior", "ablation"),
    ("general_prior_minus_ablation", "general", "prior", "ablation"),
    ("subject_prior_minus_ablation", "subject", "prior", "ablation"),
)


def paired_readings(hits: dict[str, np.ndarray], n_boot: int) -> dict[str, dict[str, float]]:
    """Paired bootstrap differences of rates (A - B, 95% CI) for :data:`PAIRS`."""
    from ldmscale.paired import paired_difference

    out = {}
    for name, s, a, b in PAIRS:
        r = paired_difference(
            hits[f"{a}/{s}"].astype(float), hits[f"{b}/{s}"].astype(float), np.mean,
            n_boot=n_boot, direction="max",
        )  # fmt: skip
        out[name] = {"diff": r.diff, "low": r.lo, "high": r.hi, "n": r.n}
    return out


def stages(cfg) -> list:
    from ldmscale.study.stages import Stage

    return [
        Stage(
            "dreambooth",
            partial(_inputs, c=c),
            partial(_done, c),
            partial(_run, c),
            unit=f"c{c}",
            outputs=partial(task_dir, c=c),
        )  # fmt: skip
        for c in cfg.widths
    ]


def dry_run(cfg) -> list[str]:
    """The task's plan for ``ldmscale study --dry-run``: fine-tunes, prior images and the
    evaluation's images and per-image UNet evaluations (CFG counted twice)."""
    from ldmscale import cost
    from ldmscale.data.subject import subject_info
    from ldmscale.dreambooth import DreamBoothConfig
    from ldmscale.sampling import SamplerConfig

    o, n = options_of(cfg), len(cfg.widths)
    info = subject_info(o["n_subject"], cfg.resolution, cfg.seed)
    db = DreamBoothConfig(
        model="", subject="", identifier=o["identifier"], out="",
        class_prompts=tuple(info["class_prompts"]), steps=o["steps"], lr=o["lr"],
        prior_images=o["prior_images"], prior_weight=o["prior_weight"],
    )  # fmt: skip
    sampler, prior = (
        SamplerConfig.from_dict(o["sampler"]),
        SamplerConfig.from_dict(db.prior_sampler),
    )
    per_model = (len(info["heldout_prompts"]) + len(info["class_prompts"])) * o["n_per_prompt"]
    per_model += o["n_general"]
    evals = len(MODELS) * cost.unet_evaluations(
        sampler.steps, cost.cfg_evaluations(sampler.guidance), per_model
    ) + cost.unet_evaluations(prior.steps, cost.cfg_evaluations(prior.guidance), db.prior_images)
    return [
        f"dreambooth: {n} widths x 2 fine-tunes (with the prior, the ablation) x {db.steps} steps "
        f"at batch {db.batch_size} (+{db.prior_batch} prior rows), lr {db.lr:g}; "
        f"{o['n_subject']} subject images; {db.prior_images} prior images drawn by each parent",
        f"dreambooth eval: {len(MODELS)} models x {per_model} images per width ({sampler.name} "
        f"{sampler.steps} steps, w {sampler.guidance:g}), {n * evals:,} per-image UNet "
        "evaluations with the prior images (CFG counted twice)",
    ]


def _report(run, figures: Path) -> list[str]:
    from ldmscale.report.dreambooth import dreambooth_sections

    return dreambooth_sections(run.cfg.root / "dreambooth", run.cfg.widths, figures)


TASK = Task(
    name="dreambooth",
    summary="DreamBooth every width on the shapes subject; subject/prompt fidelity, prior drift",
    needs=("data", "autoencoder", "train"),
    stages=stages,
    report=_report,
    default_options=default_options,
    dry_run=dry_run,
)
