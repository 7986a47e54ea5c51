"""The study's configuration (:class:`StudyConfig`) and where each stage writes.

Paths: every stage writes below ``out_dir``: ``data/shapes/`` (the generated dataset, unless
``data`` names one), ``autoencoder/`` (unless ``vae`` names one), ``cache/``, ``runs/c<c>/``,
``samples/c<c>/``, ``results.sqlite``, ``rows/``, ``floors.json``, ``report/``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ldmscale.autoencoder import AutoencoderConfig
from ldmscale.config import Config, ConfigError, omit_if_default
from ldmscale.sampling import SamplerConfig
from ldmscale.sweep import SweepConfig
from ldmscale.text import TextEncoderSpec
from ldmscale.train import TrainConfig


@dataclass
class StudyConfig(Config):
    """Everything one study needs; ``preset(name)`` gives the named starting points.

    out_dir: the study folder (every stage writes below it).
    data: a dataset folder (an imagefolder with ``train`` and ``validation`` splits, or a COCO
      root, docs/data.md); ``None`` generates ``shapes``. The sweep's metrics must suit it
      (``ldmscale.study.metrics``): the shapes probe metrics need shapes attributes.
    n_train, n_val, resolution, seed: the generated ``shapes`` dataset; ``max_objects`` 2 (one
      or two objects per image, the default) or 1 (the one-object variant, docs/data.md).
      ``resolution`` is also the training resolution of ``data``.
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
    train_workers: widths trained at once, each in its own process with one thread
        (:mod:`ldmscale.study.workers`); 1 trains them one after another in this process.
        Not a training input: the stage keys ignore it (the weights' last bits depend on it).
    tasks: study tasks run on the trained widths after the text-to-image stages (``distill``,
      ``sr``, ``dreambooth``: :mod:`ldmscale.study.tasks`); empty: text-to-image only.
    task_options: per task, its options (a table its module checks; missing: the task's
      defaults for ``preset``).
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
    train_workers: int = 1
    tasks: tuple[str, ...] = omit_if_default(())
    task_options: dict[str, dict[str, Any]] = omit_if_default(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.widths:
            raise ConfigError("StudyConfig.widths must name at least one base width")
        if self.train_workers < 1:
            raise ConfigError(
                f"StudyConfig.train_workers must be >= 1 (1: widths one after another in this "
                f"process), got {self.train_workers}"
            )
        from ldmscale.study.tasks import check_task_names

        check_task_names(self.tasks)
        extra = sorted(set(self.task_options) - set(self.tasks))
        if extra:
            raise ConfigError(
                f"StudyConfig.task_options has options for {extra}, which are not in tasks "
                f"{list(self.tasks)}: add them to tasks or remove their options"
            )
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

    def samples_dir(self, c: int) -> Path:
        return self.root / "samples" / f"c{c}"

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


#: The fields of ``StudyConfig.train`` that :meth:`StudyConfig.train_config` sets per width from
#: the study (so the template's own values of them are not a training input).
TRAIN_FIELDS_SET_BY_STUDY = (
    "run_dir",
    "c",
    "data",
    "resolution",
    "vae",
    "text_encoder",
    "cache_dir",
)
