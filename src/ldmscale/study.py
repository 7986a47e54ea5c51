"""The whole study as one resumable pipeline (``ldmscale study``).

data -> autoencoder -> caches -> train every width -> sample grids at equal sampling cost
-> sweep (models x samplers x steps x guidance) -> metrics -> frontier -> report.

Every stage writes into ``<out_dir>`` and is skipped when its output is already complete, and
the long stages (training, the sweep) resume from where a killed run stopped, so running the
same command again finishes an interrupted study. Presets:

- ``tiny``: the README's main job; 3 widths on 32 px ``shapes``, about 16 minutes on 2 CPU cores;
  its primary metric is FD-probe (Frechet distance on the shapes probe network's features),
  chosen for speed, and the report says so.
- ``trend``: the tiny recipe on the full ``shapes``, 3 widths spanning 7.7x in cost, 2,000
  steps each, 256 images per cell; about 2 hours on 2 CPU cores, resumable.
- ``small``: (superseded by ``trend``) 4 widths spanning more than 4x in cost, the paper's
  guidance grid, steps 4-50, Inception FID; about 1.5 hours on 2 CPU cores.
- ``paper``: the paper's protocol (widths 64 ... 768, 64 x 64 latents, COCO-2014 validation
  captions from a local COCO folder, 50-step DDIM at guidance 7.5 as the baseline) configured
  for a GPU cluster: run it with ``accelerate launch`` and ``--executor ray``; ``--dry-run``
  prints its plan and cost.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ldmscale import cost
from ldmscale.autoencoder import AutoencoderConfig
from ldmscale.config import Config, ConfigError
from ldmscale.io import atomic_write_json
from ldmscale.sampling import SamplerConfig
from ldmscale.sweep import SweepConfig
from ldmscale.text import TextEncoderSpec
from ldmscale.train import TrainConfig


@dataclass
class StudyConfig(Config):
    """Everything one study needs; ``preset(name)`` gives the named starting points.

    out_dir: the study folder (every stage writes below it).
    data: a dataset folder (imagefolder or COCO root); ``None`` generates ``shapes``.
    n_train, n_val, resolution, seed: the generated ``shapes`` dataset; ``max_objects`` 2 (one
      or two objects per image, the default) or 1 (the one-object variant, docs/data.md).
    vae: a local ``AutoencoderKL`` folder (e.g. SD's VAE) to use instead of training one.
    widths: base widths ``c`` to train.
    train: the training template (``run_dir`` and ``c`` are set per width).
    preview: sampler for the sample grids; ``preview.steps`` is the step count of the
      *largest* width, the others get the step count that gives the same sampling cost.
    preview_prompts: validation captions in each grid.
    sweep: the sweep template (``models``, ``dataset`` and ``store`` are filled in).
    checkpoint_sampler: the one fixed setting every kept checkpoint (``train.eval_steps``) and
      each final model is scored at (``checkpoints`` stage; the report's Fig. 3).
    primary_metric: the metric of the figures and the verdict (None: the most stored one).
    paper_table: include the paper-scale Table 1 (counted once, ~30 s) in the report.
    """

    out_dir: str = "outputs/study"
    preset: str = "custom"
    data: str | None = None
    n_train: int = 2000
    n_val: int = 256
    resolution: int = 32
    seed: int = 0
    max_objects: int = 2
    vae: str | None = None
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    text_encoder: TextEncoderSpec = field(default_factory=TextEncoderSpec)
    widths: tuple[int, ...] = (16, 32, 64)
    train: TrainConfig = field(default_factory=TrainConfig)
    preview: SamplerConfig = field(default_factory=lambda: SamplerConfig("dpmpp", 20, 4.0))
    preview_prompts: int = 8
    sweep: SweepConfig = field(default_factory=SweepConfig)
    checkpoint_sampler: SamplerConfig = field(
        default_factory=lambda: SamplerConfig("ddim", 16, 2.0, "trailing")
    )
    primary_metric: str | None = None
    paper_table: bool = True

    def __post_init__(self) -> None:
        if not self.widths:
            raise ConfigError("StudyConfig.widths must name at least one base width")
        if len(set(self.widths)) != len(self.widths):
            raise ConfigError(f"StudyConfig.widths has duplicates: {list(self.widths)}")
        if self.resolution != self.autoencoder.resolution:
            raise ConfigError(
                f"StudyConfig.resolution={self.resolution} differs from "
                f"autoencoder.resolution={self.autoencoder.resolution}: set both to the same value"
            )

    # Where each stage writes ------------------------------------------------------------
    @property
    def root(self) -> Path:
        return Path(self.out_dir)

    def data_dir(self) -> Path:
        return Path(self.data) if self.data else self.root / "data" / "shapes"

    def vae_dir(self) -> Path:
        return Path(self.vae) if self.vae else self.root / "autoencoder"

    def run_dir(self, c: int) -> Path:
        return self.root / "runs" / f"c{c}"

    def train_config(self, c: int) -> TrainConfig:
        return dataclasses.replace(
            self.train,
            run_dir=str(self.run_dir(c)),
            c=c,
            data=str(self.data_dir()),
            resolution=self.resolution,
            vae=str(self.vae_dir()),
            text_encoder=self.text_encoder.to_dict(),
            cache_dir=str(self.root / "cache"),
        )

    def sweep_config(self) -> SweepConfig:
        return dataclasses.replace(
            self.sweep,
            models=tuple(str(self.run_dir(c) / "model") for c in self.widths),
            dataset=str(self.data_dir()),
            resolution=self.resolution,
            store=str(self.root / "results.sqlite"),
            rows_dir=self.sweep.rows_dir or str(self.root / "rows"),
        )


def preset(name: str, out_dir: str | None = None) -> StudyConfig:
    """The named preset (``tiny``, ``trend``, ``small`` or ``paper``) as a ``StudyConfig``."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    cfg = PRESETS[name]()
    return cfg.replace(out_dir=out_dir) if out_dir else cfg


def _tiny() -> StudyConfig:
    # The recipe that makes a c = 32 model draw its captions within minutes on 2 CPU cores
    # (docs/study.md, "Convergence"): the one-object shapes variant, an autoencoder trained to
    # keep colours and small shapes, v-prediction with Min-SNR-5 weighting, 16-channel
    # attention heads, batch 128 at a high learning rate.
    return StudyConfig(
        out_dir="outputs/study-tiny",
        preset="tiny",
        n_train=10000,
        n_val=256,
        resolution=32,
        max_objects=1,
        autoencoder=AutoencoderConfig(
            resolution=32,
            latent_channels=8,
            steps=1200,
            lr=4e-3,
            loss="l1+l2",
            val_images=256,
            scale_images=512,
        ),
        text_encoder=TextEncoderSpec(kind="minilm", max_length=16),
        widths=(8, 16, 32),
        train=TrainConfig(
            steps=350,
            batch_size=128,
            lr=3e-3,
            warmup_steps=50,
            ema_decay=0.99,
            checkpoint_every=100,
            log_every=20,
            layers_per_block=1,
            head_dim=16,
            prediction_type="v_prediction",
            min_snr_gamma=5.0,
            eval_steps=(50, 100, 200, 350),
        ),
        preview=SamplerConfig(name="ddim", steps=16, guidance=2.0, timestep_spacing="trailing"),
        sweep=SweepConfig(
            samplers=("ddim", "ddpm", "dpmpp"),
            steps=(4, 8, 16),
            # w = 1 brackets the low optima of small models, 5 the high ones.
            guidance=(1.0, 1.5, 2.0, 3.0, 5.0),
            # trailing: every step count starts at t = 999 (leading starts 4 steps at 751).
            timestep_spacings=("trailing",),
            n_images=64,
            metrics=("fd_probe", "alignment"),
            batch_size=64,
            dpmpp_max_steps=20,
        ),
        checkpoint_sampler=SamplerConfig("ddim", 16, 2.0, "trailing"),
        primary_metric="fd_probe",
    )


def _trend() -> StudyConfig:
    # The tiny recipe on the full shapes (one or two objects), 3 widths spanning 7.7x in
    # normalized cost, trained ~6x longer, 256 images per cell; sized to finish in about two
    # hours on 2 CPU cores (``--dry-run`` prints the estimate). Resumable: rerun the same command.
    tiny = _tiny()
    return StudyConfig(
        out_dir="outputs/study-trend",
        preset="trend",
        n_train=20000,
        n_val=512,
        resolution=32,
        autoencoder=tiny.autoencoder.replace(steps=2000, val_images=512, scale_images=1024),
        text_encoder=TextEncoderSpec(kind="minilm", max_length=24),
        widths=(8, 16, 32),
        # tiny's lr 3e-3 held for 350 steps but not for 2,000: at constant 3e-3 (AdamW beta2
        # 0.999) c = 32 collapsed at step ~1,050 (loss 0.015 -> 0.24, never recovered) and c = 16
        # at ~1,950 (docs/study.md). So: peak 2e-3 with cosine decay, and beta2 0.99, whose
        # second-moment estimate follows a gradient spike within ~100 steps instead of ~1,000.
        train=tiny.train.replace(
            steps=2000,
            lr=2e-3,
            lr_schedule="cosine",
            adam_beta2=0.99,
            warmup_steps=100,
            ema_decay=0.999,
            checkpoint_every=250,
            log_every=25,
            eval_steps=(100, 250, 500, 1000, 2000),
        ),
        preview=SamplerConfig(name="ddim", steps=32, guidance=2.0, timestep_spacing="trailing"),
        sweep=tiny.sweep.replace(
            steps=(4, 8, 16, 32),
            guidance=(1.0, 1.5, 2.0, 3.0, 5.0, 8.0),
            n_images=256,
            batch_size=128,
        ),
        checkpoint_sampler=tiny.checkpoint_sampler,
        primary_metric="fd_probe",
    )


def _small() -> StudyConfig:
    # Sized from measured speeds on 2 CPU cores (training c=8..32 at 3-6 steps/s, Inception at
    # ~11 images/s): ~30 min of training, ~50 min of sweep (352 cells x 64 images, FID
    # dominating); see docs/study.md for the measured run. n_images=128 roughly doubles the sweep.
    return StudyConfig(
        out_dir="outputs/study-small",
        preset="small",
        n_train=10000,
        n_val=2048,
        resolution=32,
        autoencoder=AutoencoderConfig(resolution=32, steps=1500),
        text_encoder=TextEncoderSpec(kind="minilm", max_length=24),
        widths=(8, 16, 24, 32),
        train=TrainConfig(
            steps=2000,
            batch_size=64,
            lr=1e-3,
            warmup_steps=100,
            ema_decay=0.995,
            checkpoint_every=250,
            log_every=25,
            layers_per_block=1,
        ),
        preview=SamplerConfig(name="ddim", steps=50, guidance=4.0),
        sweep=SweepConfig(
            samplers=("ddim", "ddpm", "dpmpp"),
            steps=(4, 10, 20, 50),
            guidance=(1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0),
            n_images=64,
            metrics=("fid", "fd_probe", "alignment"),
            batch_size=64,
            bootstrap=100,
        ),
        primary_metric="fid",
    )


def _paper() -> StudyConfig:
    return StudyConfig(
        out_dir="outputs/study-paper",
        preset="paper",
        data="data/coco2014",
        vae="models/vae",
        n_val=30000,
        resolution=512,
        autoencoder=AutoencoderConfig(
            resolution=512, block_out_channels=(128, 256, 512, 512), layers_per_block=2
        ),
        text_encoder=TextEncoderSpec(kind="clip", path="models/text_encoder", max_length=77),
        widths=(64, 96, 128, 160, 192, 224, 256, 288, 320, 512, 768),
        train=TrainConfig(
            steps=500_000,
            batch_size=2048,
            lr=1e-4,
            warmup_steps=10_000,
            ema_decay=0.9999,
            checkpoint_every=5000,
            log_every=100,
            mixed_precision="bf16",
        ),
        preview=SamplerConfig(name="ddim", steps=50, guidance=7.5),
        sweep=SweepConfig(
            samplers=("ddim", "ddpm", "dpmpp"),
            steps=(4, 8, 16, 20, 25, 50, 100, 250),
            guidance=(1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 7.5, 8.0),
            n_images=30000,
            split="validation",
            metrics=("fid", "clip_score"),
            clip_model="models/clip",
            batch_size=64,
            executor="ray",
        ),
        primary_metric="fid",
    )


PRESETS = {"tiny": _tiny, "trend": _trend, "small": _small, "paper": _paper}


@dataclass
class StudyResult:
    """Where a study wrote everything, and how long each stage took (seconds)."""

    out_dir: Path
    data: Path
    autoencoder: Path
    runs: list[Path]
    samples: list[Path]
    store: Path | None
    report: Path | None
    timings: dict[str, float]
    verdict: str | None = None


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

#: The fresh seed set the optimal-guidance cells are re-evaluated on (``confirm`` stage), so
#: the value reported at an optimum is not chosen and measured on the same images.
CONFIRM_SEED0 = 10_000


def run_study(
    cfg: StudyConfig, stages: tuple[str, ...] = STAGES, progress: bool = True, log=print
) -> StudyResult:
    """Run (or resume) the study ``cfg``; returns where everything was written.

    ``stages`` restricts the run to a prefix-closed subset (later stages need earlier outputs,
    which are reused when present). ``log`` receives one line per stage.
    """
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; stages are {list(STAGES)}")
    root = cfg.root
    root.mkdir(parents=True, exist_ok=True)
    _claim_study_dir(cfg)
    timings: dict[str, float] = {}
    result = StudyResult(
        out_dir=root,
        data=cfg.data_dir(),
        autoencoder=cfg.vae_dir(),
        runs=[cfg.run_dir(c) for c in cfg.widths],
        samples=[],
        store=None,
        report=None,
        timings=timings,
    )

    def stage(name: str):
        log(f"[study] {name} ...")
        return _Timer(timings, name)

    if "data" in stages:
        with stage("data"):
            _stage_data(cfg, progress)
    if "autoencoder" in stages:
        with stage("autoencoder"):
            _stage_autoencoder(cfg, progress, log)
    if "train" in stages:
        with stage("train"):
            _stage_train(cfg, progress, log)
    if "samples" in stages:
        with stage("samples"):
            result.samples = _stage_samples(cfg, progress)
    if "sweep" in stages:
        with stage("sweep"):
            result.store = _stage_sweep(cfg, progress, log)
    if "confirm" in stages:
        with stage("confirm"):
            _stage_confirm(cfg, progress, log)
    if "checkpoints" in stages:
        with stage("checkpoints"):
            _stage_checkpoints(cfg, progress, log)
    if "floors" in stages:
        with stage("floors"):
            _stage_floors(cfg, progress, log)
    if "report" in stages:
        with stage("report"):
            result.report, result.verdict = _stage_report(cfg, result.samples)
    atomic_write_json(
        root / "study.json",
        {"config": cfg.to_dict(), "timings_s": timings, "report": str(result.report or "")},
    )
    return result


class _Timer:
    def __init__(self, timings: dict[str, float], name: str) -> None:
        self.timings, self.name = timings, name

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        self.timings[self.name] = round(time.perf_counter() - self.t0, 2)


def _claim_study_dir(cfg: StudyConfig) -> None:
    """Refuse to mix two different studies in one folder (the config is stored on first use;
    fields added by a later ldmscale version compare at their defaults)."""
    path = cfg.root / "study_config.json"
    if path.is_file():
        try:
            old = StudyConfig.load(path)
        except ConfigError as e:
            raise ConfigError(
                f"{path} cannot be read as a study config ({e}); use another --out folder"
            ) from e
        if old.replace(out_dir=cfg.out_dir) != cfg:
            raise ConfigError(
                f"{cfg.root} holds a study with a different config ({path}); use another "
                "--out folder, or delete that folder to start again"
            )
    else:
        cfg.save(path)


def _stage_data(cfg: StudyConfig, progress: bool) -> None:
    from ldmscale.data import load_dataset
    from ldmscale.data.shapes import generate_shapes

    if cfg.data:
        load_dataset(cfg.data, split="train", resolution=cfg.resolution)  # validate early
        return
    generate_shapes(
        cfg.data_dir(),
        cfg.n_train,
        cfg.n_val,
        resolution=cfg.resolution,
        seed=cfg.seed,
        max_objects=cfg.max_objects,
    )


def _stage_autoencoder(cfg: StudyConfig, progress: bool, log) -> None:
    from ldmscale.autoencoder import read_training_record, train_autoencoder
    from ldmscale.data import load_dataset

    if cfg.vae:
        from ldmscale.autoencoder import load_autoencoder

        load_autoencoder(cfg.vae)  # fails early, naming the problem, if it is not usable
        log(f"[study]   using the autoencoder at {cfg.vae}")
        return
    record = read_training_record(cfg.vae_dir())
    if record is not None:
        log(f"[study]   reusing {cfg.vae_dir()} (val PSNR {record.get('val_psnr_db', '?')} dB)")
        return
    train_ds = load_dataset(cfg.data_dir(), split="train", resolution=cfg.resolution)
    val_ds = load_dataset(cfg.data_dir(), split="validation", resolution=cfg.resolution)
    train_autoencoder(train_ds, val_ds, cfg.autoencoder, cfg.vae_dir(), progress=progress)
    record = read_training_record(cfg.vae_dir()) or {}
    log(f"[study]   autoencoder val PSNR {record.get('val_psnr_db', float('nan')):.2f} dB")


def _stage_train(cfg: StudyConfig, progress: bool, log) -> None:
    from ldmscale.train import train

    for c in cfg.widths:
        if (cfg.run_dir(c) / "model" / "ldmscale_model.json").is_file():
            log(f"[study]   c={c}: trained model found, skipping")
            continue
        log(f"[study]   training c={c} for {cfg.train.steps} steps")
        train(cfg.train_config(c), progress=progress)


def _stage_samples(cfg: StudyConfig, progress: bool) -> list[Path]:
    """A captioned grid per width at (about) equal sampling cost: the largest width gets
    ``preview.steps`` steps; each other width the step count with the nearest cost."""
    from ldmscale.data import load_dataset
    from ldmscale.model import load_model
    from ldmscale.sampling import generate, read_samples, save_samples

    val = load_dataset(cfg.data_dir(), split="validation", resolution=cfg.resolution)
    prompts = list(val.captions[: cfg.preview_prompts])
    seeds = [cfg.seed + i for i in range(len(prompts))]
    models = {c: load_model(cfg.run_dir(c) / "model") for c in cfg.widths}
    top = max(cfg.widths)
    budget = cost.sampling_cost(models[top].norm_cost, cfg.preview.steps)
    out_dirs = []
    for c, model in models.items():
        steps = max(1, round(budget / model.norm_cost))
        sampler = cfg.preview.replace(steps=steps)
        out = cfg.root / "samples" / f"c{c}"
        out_dirs.append(out)
        try:
            done = read_samples(out)
            if done.get("sampler") == sampler.to_dict() and done.get("seeds") == seeds:
                continue
        except (FileNotFoundError, ValueError):
            pass
        result = generate(model, prompts, seeds, sampler, progress=progress)
        save_samples(result, prompts, out)
    return out_dirs


def _stage_sweep(cfg: StudyConfig, progress: bool, log) -> Path:
    from ldmscale.sweep import plan_sweep, run_sweep

    sweep_cfg = cfg.sweep_config()
    plan = plan_sweep(sweep_cfg)
    log(f"[study]   sweep: {len(plan.cells)} cells -> {sweep_cfg.store}")
    summary = run_sweep(sweep_cfg, progress=progress, plan=plan)
    log(f"[study]   computed {len(summary.computed_ids)} cells (the rest were already stored)")
    return Path(sweep_cfg.store)


def _stage_confirm(cfg: StudyConfig, progress: bool, log) -> None:
    """Re-evaluate each (model, sampler, spacing, steps) group's optimal-guidance cell on the
    fresh seed set ``CONFIRM_SEED0`` (same prompts), for unbiased values at the optima."""
    from ldmscale.frontier import default_metric, optimal_guidance
    from ldmscale.store import ResultsStore
    from ldmscale.sweep import run_sweep

    sweep_cfg = cfg.sweep_config()
    with ResultsStore(sweep_cfg.store) as store:
        rows = [r for r in store.rows() if int(r.get("seed0") or 0) == sweep_cfg.seed0]
    metric = cfg.primary_metric or default_metric(rows)
    by_id = {r["cell_id"]: r for r in rows}
    settings = []
    for spacing in sorted({str(r.get("timestep_spacing") or "leading") for r in rows}):
        for p in optimal_guidance(rows, metric, spacing=spacing, select_seed0=sweep_cfg.seed0):
            row = by_id.get(p.select_cell_id or p.cell_id or "")
            if row is not None:
                settings.append((row["model_path"], p.sampler, p.steps, p.guidance, spacing))
    log(f"[study]   {len(settings)} optimal-guidance cells on fresh seeds from {CONFIRM_SEED0}")
    run_sweep(sweep_cfg.replace(seed0=CONFIRM_SEED0), progress=progress, settings=settings)


def checkpoint_settings(cfg: StudyConfig) -> list[tuple[str, str, int, float, str]]:
    """The ``checkpoints`` stage's cells: every kept checkpoint export ``<run>/evals/step-N``
    of every width, and each final model, at ``checkpoint_sampler`` (one fixed setting)."""
    from ldmscale.sweep import DEFAULT_SPACING

    s = cfg.checkpoint_sampler
    spacing = s.timestep_spacing or DEFAULT_SPACING
    out = []
    for c in cfg.widths:
        evals = cfg.run_dir(c) / "evals"
        folders = sorted(evals.glob("step-*")) if evals.is_dir() else []
        for folder in [*folders, cfg.run_dir(c) / "model"]:
            if (folder / "ldmscale_model.json").is_file():
                out.append((str(folder), s.name, s.steps, s.guidance, spacing))
    return out


def _stage_checkpoints(cfg: StudyConfig, progress: bool, log) -> None:
    """Score the kept checkpoints at one fixed setting: the sample metric against training
    compute (the paper's Fig. 3), the convergence signal of each width."""
    from ldmscale.sweep import run_sweep

    settings = checkpoint_settings(cfg)
    if not settings:
        log("[study]   no kept checkpoints (train.eval_steps is empty)")
        return
    s = cfg.checkpoint_sampler
    log(f"[study]   {len(settings)} checkpoint cells at {s.name} x{s.steps}, w={s.guidance}")
    run_sweep(cfg.sweep_config(), progress=progress, settings=settings)


def _stage_floors(cfg: StudyConfig, progress: bool, log) -> Path:
    """Real held-out and autoencoder-reconstruction floors at the cells' N (``floors.json``)."""
    from ldmscale.floors import ensure_floors, format_floors

    path = cfg.root / "floors.json"
    floors = ensure_floors(path, cfg.sweep_config(), cfg.vae_dir(), progress=progress)
    for line in format_floors(floors).splitlines():
        log(f"[study]   {line}")
    return path


def _stage_report(cfg: StudyConfig, samples: list[Path]) -> tuple[Path, str]:
    from ldmscale.frontier import Comparer, budget_verdicts, default_metric, optimal_guidance
    from ldmscale.paired import RowSource
    from ldmscale.report import build_report, load_sample_grids
    from ldmscale.store import ResultsStore

    with ResultsStore(cfg.root / "results.sqlite") as store:
        rows = store.rows()
    grids = []
    for folder in samples or [cfg.root / "samples"]:
        if folder.exists():
            grids += load_sample_grids(folder)
    note = None
    if cfg.primary_metric == "fd_probe":
        note = (
            "FD-probe is the Frechet distance on the features of a small probe network trained "
            "on real shapes images (not Inception FID), chosen for speed on a CPU"
        )
    # Paired bootstrap over the shared image indices, from the study's per-image rows; one
    # source for the report and the verdict, so each cell's rows are read once.
    source = RowSource(cfg.sweep_config().rows_dir)
    floors_path = cfg.root / "floors.json"
    floors = None
    if floors_path.is_file():
        from ldmscale.frontier import load_floors

        floors = load_floors(floors_path)
    path = build_report(
        rows,
        floors=floors,
        runs=[cfg.run_dir(c) for c in cfg.widths],
        sample_grids=grids,
        out_dir=cfg.root / "report",
        family_table=_paper_table(cfg.root) if cfg.paper_table else None,
        title=f"ldmscale study ({cfg.preset})",
        primary_metric=cfg.primary_metric,
        metric_note=note,
        source=source,
    )
    metric = cfg.primary_metric or default_metric(rows)
    fresh = CONFIRM_SEED0 if any(int(r.get("seed0") or 0) == CONFIRM_SEED0 for r in rows) else None
    points = optimal_guidance(rows, metric, report_seed0=fresh)
    spans = budget_verdicts(points, comparer=Comparer(rows, source))
    return path, "\n".join(span.text() for span in spans)


def _paper_table(root: Path) -> list[dict]:
    """The paper-scale Table 1 (counted once, ~30 s, then reused from ``family_table.json``)."""
    from ldmscale.family import family_table

    path = root / "family_table.json"
    if path.is_file():
        return json.loads(path.read_text())
    table = family_table()
    atomic_write_json(path, table)
    return table


def dry_run(cfg: StudyConfig, calibrate: bool = True) -> str:
    """The study's plan and cost without running it: family costs of the widths, the training
    compute, the sweep's cells and UNet evaluations, and (``calibrate``) estimated hours on
    this machine from timing each width's UNet with random weights (skipped where one timed
    call would exceed ~300 GFLOPs: such widths belong on the target machine)."""
    from ldmscale.family import UNetSpec, count_gflops, count_params, normalized_cost
    from ldmscale.sweep.estimate import metric_seconds, sampling_seconds
    from ldmscale.sweep.plan import grid_settings

    latent = cfg.resolution // cfg.autoencoder.downsampling_factor
    ctx_dim = 1024 if cfg.text_encoder.kind == "clip" else 384
    sw = cfg.sweep
    cells = grid_settings(sw)
    lines = [f"Study {cfg.preset!r} -> {cfg.out_dir}"]
    lines.append(
        f"data: {cfg.data or 'shapes'} at {cfg.resolution} px; latent "
        f"{cfg.autoencoder.latent_channels}x{latent}x{latent}; text {cfg.text_encoder.kind} "
        f"({cfg.text_encoder.max_length} tokens)"
    )
    header = f"{'c':>6} {'params':>14} {'GFLOPs/fwd':>11} {'norm cost':>10} {'train compute':>14}"
    lines.append(header + (f" {'est. train':>11} {'est. sweep':>11}" if calibrate else ""))
    total_s: float | None = 0.0
    evals_per_width = sum(
        cost.unet_evaluations(steps, cost.cfg_evaluations(w), sw.n_images)
        for _, steps, w, _ in cells
    )
    train_flops = sweep_flops = 0.0
    for c in cfg.widths:
        spec = UNetSpec(
            c=c,
            context_dim=ctx_dim,
            context_len=cfg.text_encoder.max_length,
            latent_channels=cfg.autoencoder.latent_channels,
            latent_size=latent,
            layers_per_block=cfg.train.layers_per_block,
            head_dim=cfg.train.head_dim,
        )
        norm_cost, params = normalized_cost(spec), count_params(spec)
        line = (
            f"{c:>6} {params:>14,} {count_gflops(spec):>11.3f} {norm_cost:>10.4f} "
            f"{norm_cost * cfg.train.steps:>14.1f}"
        )
        dense = count_gflops(spec, "dense")
        train_flops += 3 * dense * 1e9 * cfg.train.batch_size * cfg.train.steps
        sweep_flops += dense * 1e9 * evals_per_width
        work = dense * max(3 * cfg.train.batch_size, 2 * sw.batch_size)
        if calibrate and work <= 300:
            step_s, fwd_s = _time_unet(spec, cfg.train.batch_size, 2 * sw.batch_size)
            train_s = step_s * cfg.train.steps
            # every cell timed at the doubled (CFG) batch, no VAE: an upper bound for w = 1
            timing = {"unet_s": fwd_s, "unet_cfg_s": fwd_s}
            sweep_s = sum(
                sampling_seconds(steps, w, sw.n_images, sw.batch_size, timing)
                + metric_seconds(sw.metrics, sw.n_images)
                for _, steps, w, _ in cells
            )
            line += f" {_hours(train_s):>11} {_hours(sweep_s):>11}"
            if total_s is not None:
                total_s += train_s + sweep_s
        elif calibrate:
            line += f" {'(target)':>11} {'(target)':>11}"
            total_s = None
        lines.append(line)
    n_cells = len(cells) * len(cfg.widths)
    evals = len(cfg.widths) * evals_per_width
    lines.append(
        f"training: {len(cfg.widths)} widths x {cfg.train.steps} steps at batch "
        f"{cfg.train.batch_size} ({cfg.train.batch_size * cfg.train.steps:,} images each)"
    )
    lines.append(
        f"sweep: {n_cells} cells ({', '.join(sw.samplers)}; steps {list(sw.steps)}; guidance "
        f"{list(sw.guidance)}; DPM-Solver++ up to {sw.dpmpp_max_steps} steps), {sw.n_images} "
        f"images per cell, {evals:,} per-image UNet evaluations (CFG counted twice), "
        f"metrics {list(sw.metrics)}, executor {sw.executor}"
    )
    lines.append(
        f"UNet compute (dense FLOPs): training {train_flops:.3g} (3x forward per image), "
        f"sweep {sweep_flops:.3g}; VAE, text encoder and metrics not included"
    )
    if calibrate and total_s is not None:
        lines.append(
            f"estimated on this machine: {_hours(total_s)} for training + sweep (the "
            "autoencoder, caches, probe and report add a few minutes)"
        )
    elif calibrate:
        lines.append("no full time estimate: the large widths are timed on the target machine")
    return "\n".join(lines)


def _time_unet(spec: Any, train_batch: int, sample_batch: int) -> tuple[float, float]:
    """Seconds of one AdamW training step at ``train_batch`` and one inference forward at
    ``sample_batch`` (the CFG-doubled batch), random weights, best of two after a warm-up."""
    import torch

    from ldmscale.family import build_unet, unet_inputs

    with torch.random.fork_rng():
        torch.manual_seed(0)
        unet = build_unet(spec)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)

    def best_of(fn) -> float:
        fn()
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    def step() -> None:
        args, kwargs = unet_inputs(spec, "cpu", train_batch)
        unet(*args, **kwargs).sample.square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def forward() -> None:
        args, kwargs = unet_inputs(spec, "cpu", sample_batch)
        with torch.inference_mode():
            unet(*args, **kwargs)

    return best_of(step), best_of(forward)


def _hours(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"
