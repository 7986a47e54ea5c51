"""The named study presets (``tiny``, ``trend``, ``small``, ``paper``) as :class:`StudyConfig` s.

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

from ldmscale.autoencoder import AutoencoderConfig
from ldmscale.config import ConfigError
from ldmscale.sampling import SamplerConfig
from ldmscale.study.config import StudyConfig
from ldmscale.sweep import SweepConfig
from ldmscale.text import TextEncoderSpec
from ldmscale.train import TrainConfig


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
            # 4e-3: at 350 steps c = 32 learns position only at the highest lr tried (one
            # thread, DDIM 8, w = 2, 128 prompts: alignment 0.20 at 2e-3 cosine, 0.28 at 3e-3,
            # 0.31 at 3e-3 cosine, 0.70 at 4e-3; position accuracy 0.38 -> 0.91).
            lr=4e-3,
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
            # two one-thread worker processes: ~1.5x the images/s of one two-thread process
            executor="processes",
            num_cpus=2,
        ),
        checkpoint_sampler=SamplerConfig("ddim", 16, 2.0, "trailing"),
        primary_metric="fd_probe",
        # c = 32 on one thread runs about as fast as on two: two widths side by side
        train_workers=2,
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
        train_workers=2,
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
