"""The study task ``sr``: x4 super-resolution fine-tuning of every width (the paper's Sec. 3.2,
3.5, Fig. 4 and 12).

``ldmscale study --preset tiny --task sr`` builds on the study's trained text-to-image widths
(``needs``: data, autoencoder, train) and adds three stages:

| stage | unit | outputs | done when |
| --- | --- | --- | --- |
| sr_train | ``c<c>`` | ``sr/runs/c<c>/`` (``objective = "sr"``, ``init_from`` = the width's model; exports at the log-spaced ``keep`` steps in ``evals/step-N``) | its ``model/`` exists |
| sr_sweep | | SR cells in ``results.sqlite`` (per-image rows in the study's row cache) | every cell is stored |
| sr_baselines | | ``sr/baselines.json`` + ``.npz`` (bicubic and autoencoder rows), ``sr/grid.npz`` | its inputs' key matches |

The SR cells (:mod:`ldmscale.sr_eval`, guidance 1): every width's final model at every
``sample_steps`` (Fig. 12: quality against sampling cost), and every kept export at
``checkpoint_steps`` (Fig. 4: quality against fine-tuning compute = normalized cost x
fine-tuning steps). All on the first ``n_images`` validation images, image ``i`` degraded with
seed ``lr_seed0 + i`` and sampled with seed ``i``, so every cell pairs with every other and
with the baselines. The report sections are :mod:`ldmscale.report.sr`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ldmscale.config import Config, ConfigError
from ldmscale.study.config import StudyConfig
from ldmscale.study.context import StudyRun
from ldmscale.study.stages import Stage, data_inputs, train_inputs
from ldmscale.study.tasks import Task


@dataclass
class SRTaskOptions(Config):
    """``task_options["sr"]``.

    Fine-tuning (per width, from its text-to-image model): ``steps`` of ``batch_size``,
    ``lr`` (constant after ``warmup_steps``), ``ema_decay``, exports at ``keep`` (log-spaced,
    each ``<= steps``), degradation preset ``degradation`` and LR noise levels below
    ``max_noise_level``. Evaluation: ``n_images`` validation images (LR seeds from
    ``lr_seed0``), ``sampler`` with ``spacing``, the final models at ``sample_steps`` and the
    kept exports at ``checkpoint_steps``; ``metrics`` (SR metrics of the registry) with
    ``bootstrap`` resamples; the readings use ``reading_metrics``. ``grid_images`` LR images
    (upscaled at ``grid_steps``) make the LR | bicubic | SR | GT grid.
    """

    steps: int = 256
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 10
    ema_decay: float = 0.99
    keep: tuple[int, ...] = (16, 32, 64, 128)
    degradation: str = "shapes32"
    max_noise_level: int = 350
    n_images: int = 128
    lr_seed0: int = 0
    sampler: str = "ddim"
    spacing: str = "trailing"
    sample_steps: tuple[int, ...] = (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96)
    checkpoint_steps: int = 16
    metrics: tuple[str, ...] = ("fd_probe", "psnr", "ssim", "attr_acc", "object_acc")
    reading_metrics: tuple[str, ...] = ("fd_probe", "attr_acc")
    bootstrap: int = 200
    probe_steps: int = 600
    grid_images: int = 8
    grid_steps: int = 32

    def __post_init__(self) -> None:
        bad = [k for k in self.keep if not 1 <= int(k) <= self.steps]
        if bad:
            raise ConfigError(f"sr task: keep steps {bad} are outside 1..steps={self.steps}")
        if not self.sample_steps or min(self.sample_steps) < 1 or max(self.sample_steps) > 1000:
            raise ConfigError("sr task: sample_steps must be step counts in 1..1000")
        from ldmscale.metrics.registry import check_metrics

        for m in check_metrics(self.metrics):
            if m.kind != "feature_distance" and "ground_truth" not in m.needs:
                raise ConfigError(
                    f"sr task: metric {m.name!r} does not score SR outputs; use the Frechet "
                    "distances, psnr, ssim, attr_acc or object_acc"
                )
        missing = set(self.reading_metrics) - set(self.metrics)
        if missing:
            raise ConfigError(f"sr task: reading_metrics {sorted(missing)} are not in metrics")


def options(cfg: StudyConfig) -> SRTaskOptions:
    """The task's options in ``cfg`` (the preset's defaults when it has none)."""
    return SRTaskOptions.from_dict(TASK.options(cfg))


def default_options(preset: str) -> dict[str, Any]:
    """The defaults for every preset; ``tiny`` runs in about 20 min on one core."""
    return SRTaskOptions().to_dict()


def sr_root(cfg: StudyConfig) -> Path:
    return cfg.root / "sr"


def sr_run_dir(cfg: StudyConfig, c: int) -> Path:
    return sr_root(cfg) / "runs" / f"c{c}"


def sr_train_config(cfg: StudyConfig, c: int) -> Any:
    """Width ``c``'s SR fine-tuning run: the study's training template, from its model."""
    o = options(cfg)
    return cfg.train_config(c).replace(
        run_dir=str(sr_run_dir(cfg, c)),
        objective="sr",
        objective_options={"degradation": o.degradation, "max_noise_level": o.max_noise_level},
        init_from=str(cfg.run_dir(c) / "model"),
        steps=o.steps,
        batch_size=o.batch_size,
        lr=o.lr,
        lr_schedule="constant",
        warmup_steps=o.warmup_steps,
        ema_decay=o.ema_decay,
        eval_steps=tuple(sorted({int(k) for k in o.keep})),
        checkpoint_every=max(1, o.steps // 2),
        log_every=max(1, min(20, o.steps)),
    )


def _train_inputs(cfg: StudyConfig, c: int) -> dict[str, Any]:
    o = options(cfg).to_dict()
    train = {k: o[k] for k in ("steps", "batch_size", "lr", "warmup_steps", "ema_decay", "keep")}
    sr = {"degradation": o["degradation"], "max_noise_level": o["max_noise_level"]}
    return {"parent": train_inputs(cfg, c), "sr_train": train | sr}


def _train_done(c: int, run: StudyRun) -> bool:
    from ldmscale.modelfolder import MODEL_FILE

    return (sr_run_dir(run.cfg, c) / "model" / MODEL_FILE).is_file()


def _train_run(c: int, run: StudyRun) -> None:
    from ldmscale.train import train

    tc = sr_train_config(run.cfg, c)
    run.log(f"[study]   SR fine-tuning c={c} for {tc.steps} steps from {tc.init_from}")
    train(tc, progress=run.progress)


# ------------------------------------------------------------------------------ sweep


def _eval_inputs(cfg: StudyConfig) -> dict[str, Any]:
    o = options(cfg).to_dict()
    keys = ("n_images", "lr_seed0", "sampler", "spacing", "metrics", "bootstrap", "probe_steps")
    return {
        "models": {f"c{c}": _train_inputs(cfg, c) for c in cfg.widths},
        "data": data_inputs(cfg),
        "eval": {k: o[k] for k in keys},
    }


def lr_set(run: StudyRun) -> Any:
    """The evaluation LR set (first ``n_images`` validation images, fixed degradation seeds)."""
    from ldmscale.data.degrade import PRESETS
    from ldmscale.sr_eval import lr_set_from_dataset

    def build() -> Any:
        o = options(run.cfg)
        deg = PRESETS[o.degradation]()
        return lr_set_from_dataset(
            run.cfg.data_dir(), o.n_images, run.cfg.resolution, deg, seed0=o.lr_seed0
        )

    return run._cached("sr_lr_set", build)


def sr_cells(run: StudyRun) -> list[Any] | None:
    """The task's SR cells (final models x ``sample_steps``, kept exports x
    ``checkpoint_steps``), or None while a width's SR model is missing."""
    from ldmscale.modelfolder import MODEL_FILE
    from ldmscale.sr_eval import sr_context

    cfg, o = run.cfg, options(run.cfg)
    finals = [sr_run_dir(cfg, c) / "model" for c in cfg.widths]
    if not all((m / MODEL_FILE).is_file() for m in finals):
        return None

    def build() -> list[Any]:
        kept = [
            f
            for c in cfg.widths
            for f in sorted((sr_run_dir(cfg, c) / "evals").glob("step-*"))
            if (f / MODEL_FILE).is_file()
        ]
        ctx = sr_context(
            [*finals, *kept],
            lr_set(run),
            tuple(o.metrics),
            rows_dir=run.sweep_cfg.rows_dir,
            bootstrap=o.bootstrap,
            probe_steps=o.probe_steps,
        )
        by_path = {Path(m.path).resolve(): m for m in ctx.models}
        n = o.n_images
        cells = [
            ctx.cell(by_path[m.resolve()], o.sampler, s, 1.0, n, o.spacing)
            for m in finals
            for s in sorted(set(o.sample_steps))
        ]
        cells += [
            ctx.cell(by_path[m.resolve()], o.sampler, o.checkpoint_steps, 1.0, n, o.spacing)
            for m in [*kept, *finals]
        ]
        return list({c.cell_id: c for c in cells}.values())

    return run._cached("sr_cells", build)


def _sweep_done(run: StudyRun) -> bool:
    cells = sr_cells(run)
    return cells is not None and {c.cell_id for c in cells} <= run.stored_ids()


def _sweep_run(run: StudyRun) -> None:
    from ldmscale.sr_eval import evaluate_sr_cell, prepare_sr
    from ldmscale.store import ResultsStore
    from ldmscale.sweep import run_cells

    cells = sr_cells(run)
    if cells is None:
        raise ConfigError("sr_sweep needs every width's SR model: run the sr_train stage first")
    run.log(f"[study]   SR sweep: {len(cells)} cells -> {run.sweep_cfg.store}")
    with ResultsStore(run.sweep_cfg.store) as store:
        s = run_cells(
            cells,
            store,
            evaluate_sr_cell,
            progress=run.progress,
            desc="SR cells",
            prepare=prepare_sr,
        )
    run.log(f"[study]   computed {s.computed} SR cells in {s.wall_s:.0f} s")


# -------------------------------------------------------------------------- baselines


def _baselines_inputs(cfg: StudyConfig) -> dict[str, Any]:
    o = options(cfg)
    return {**_eval_inputs(cfg), "grid": [o.grid_images, o.grid_steps]}


def _baselines_done(run: StudyRun) -> bool:
    path = sr_root(run.cfg) / "baselines.json"
    if not path.is_file() or not (sr_root(run.cfg) / "grid.npz").is_file():
        return False
    from ldmscale.io import hash_json

    return json.loads(path.read_text()).get("key") == hash_json(_baselines_inputs(run.cfg))


def _baselines_run(run: StudyRun) -> None:
    """Bicubic and autoencoder-reconstruction rows and scores (``sr/baselines.*``), and the
    grid's images (``sr/grid.npz``: LR, bicubic, each width's SR, GT)."""
    import numpy as np

    from ldmscale.autoencoder import load_autoencoder
    from ldmscale.io import atomic_write_bytes, atomic_write_json, hash_json
    from ldmscale.metrics.protocol import score_rows
    from ldmscale.model import load_model
    from ldmscale.sampling import SamplerConfig
    from ldmscale.sr_eval import baseline_images, sr_metric_rows, sr_protocol
    from ldmscale.upscale import upscale

    cfg, o = run.cfg, options(run.cfg)
    lrset = lr_set(run)
    protocol = sr_protocol(lrset, tuple(o.metrics), o.bootstrap, probe_steps=o.probe_steps)
    scale = cfg.resolution // lrset.lr.shape[1]
    images = baseline_images(lrset, scale, load_autoencoder(cfg.vae_dir()))
    scores, arrays = {}, {}
    for name, imgs in images.items():
        rows, _ = sr_metric_rows(imgs, lrset, protocol)
        scores[name] = score_rows(rows, protocol)
        arrays.update({f"{name}/{k}": v for k, v in rows.items()})
    k = o.grid_images
    grid = {"lr": lrset.lr[:k], "bicubic": images["bicubic"][:k], "gt": lrset.hr[:k]}
    sampler = SamplerConfig(o.sampler, o.grid_steps, 1.0, o.spacing)
    for c in cfg.widths:
        model = load_model(sr_run_dir(cfg, c) / "model")
        grid[f"c{c}"] = upscale(model, lrset.lr[:k], list(range(k)), sampler, progress=False).images
    root = sr_root(cfg)
    root.mkdir(parents=True, exist_ok=True)
    for name, data in (("baselines.npz", arrays), ("grid.npz", grid)):
        import io

        buf = io.BytesIO()
        np.savez(buf, **data)
        atomic_write_bytes(root / name, buf.getvalue())
    record = {"key": hash_json(_baselines_inputs(cfg)), "protocol": protocol, "scores": scores}
    atomic_write_json(root / "baselines.json", record)
    for name, s in scores.items():
        run.log(f"[study]   {name}: " + ", ".join(f"{m} {v['value']:.4g}" for m, v in s.items()))


def _stages(cfg: StudyConfig) -> list[Stage]:
    return [
        *(
            Stage(
                "sr_train",
                partial(_train_inputs, c=c),
                partial(_train_done, c),
                partial(_train_run, c),
                unit=f"c{c}",
                outputs=partial(sr_run_dir, c=c),
            )
            for c in cfg.widths
        ),
        Stage("sr_sweep", _eval_inputs, _sweep_done, _sweep_run),
        Stage("sr_baselines", _baselines_inputs, _baselines_done, _baselines_run),
    ]


def dry_run(cfg: StudyConfig) -> list[str]:
    """The task's plan for ``ldmscale study --dry-run``: fine-tuning runs, SR cells and
    per-image UNet evaluations (guidance 1: one evaluation per step)."""
    o, n = options(cfg), len(cfg.widths)
    finals = sorted({int(s) for s in o.sample_steps})
    # The kept exports before the last step are models of their own; one at the last step is
    # the final model (the same weights, so the same cells).
    exports = len({int(k) for k in o.keep if int(k) < o.steps})
    at_ckpt = exports + (o.checkpoint_steps not in finals)
    evals = o.n_images * (sum(finals) + o.checkpoint_steps * at_ckpt)
    return [
        f"sr: {n} widths x {o.steps} fine-tuning steps at batch {o.batch_size} (x4, degradation "
        f"{o.degradation!r}, LR noise levels below {o.max_noise_level}); exports at "
        f"{sorted({int(k) for k in o.keep})}",
        f"sr sweep: {n * (len(finals) + at_ckpt)} cells ({o.sampler}, {o.spacing}, guidance 1; "
        f"final models at {finals} steps, exports at {o.checkpoint_steps}), {o.n_images} LR "
        f"images each, {n * evals:,} per-image UNet evaluations; metrics {list(o.metrics)}; "
        "baselines bicubic and autoencoder",
    ]


def _report(run: StudyRun, figures: Path) -> list[str]:
    from ldmscale.report.sr import sr_sections

    return sr_sections(run, figures)


TASK = Task(
    name="sr",
    summary="x4 super-resolution fine-tuning of every width (Fig. 4 and 12)",
    needs=("data", "autoencoder", "train"),
    stages=_stages,
    report=_report,
    default_options=default_options,
    dry_run=dry_run,
)
