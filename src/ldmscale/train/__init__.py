"""The one trainer: trains a family member on cached latents and text embeddings.

``train(cfg)`` reads the latent cache and the caption-embedding cache (see
``ldmscale.cache``), builds ``UNetSpec(c, context_dim=D, context_len=T,
latent_channels=C, latent_size=h)`` from them (plus the objective's overrides), starts from
random weights or from a trained model (``init_from``, :mod:`ldmscale.surgery`), and optimises
the pluggable objective (:mod:`ldmscale.objectives`; text-to-image by default) with AdamW, a
linear LR warm-up (then constant or cosine), gradient clipping, an EMA of the weights and
optional bf16 autocast, on Hugging Face Accelerate (so ``accelerate launch`` / ``torchrun``
runs it multi-process unchanged).

Conventions:

- ``batch_size`` is the *global* batch; each of the P processes takes ``batch_size / P`` rows.
- Data order and randomness: see :mod:`ldmscale.train.determinism`. Resuming needs only the
  step count (and the objective's state, saved in every checkpoint), and a run resumed from a
  checkpoint ends with bitwise the same weights as an uninterrupted run (same device, same
  process count).
- Training compute = normalized cost x iterations (the paper's Fig. 3 x-axis).

Modules: ``config`` (TrainConfig, errors), ``determinism``, ``ema``, ``checkpoint``,
``rundir`` (run folder, log), ``export`` (model folders), ``loop`` (``train``). Run folder
layout: see ``docs/architecture.md`` and ``docs/train.md``.
"""

from ldmscale.cache import Conditioning, load_conditioning, resolve_cache_paths
from ldmscale.family import model_costs
from ldmscale.modelfolder import MODEL_FORMAT
from ldmscale.train.checkpoint import (
    LATEST,
    STATE_FILE,
    find_resume_checkpoint,
    load_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from ldmscale.train.config import (
    LR_SCHEDULES,
    MIXED_PRECISIONS,
    CheckpointError,
    RunMismatchError,
    TrainConfig,
    TrainError,
    TrainingDivergedError,
    check_eval_steps,
    log_spaced_steps,
)
from ldmscale.train.determinism import DataOrder, derive_seed, step_generator
from ldmscale.train.ema import EMA
from ldmscale.train.export import (
    eval_dir,
    export_is_complete,
    export_model,
    training_state_keys,
)
from ldmscale.train.loop import make_optimizer, train
from ldmscale.train.rundir import EVALS_DIR, claim_run_dir

__all__ = [
    "EMA",
    "EVALS_DIR",
    "LATEST",
    "LR_SCHEDULES",
    "MIXED_PRECISIONS",
    "MODEL_FORMAT",
    "STATE_FILE",
    "CheckpointError",
    "Conditioning",
    "DataOrder",
    "RunMismatchError",
    "TrainConfig",
    "TrainError",
    "TrainingDivergedError",
    "check_eval_steps",
    "claim_run_dir",
    "derive_seed",
    "eval_dir",
    "export_is_complete",
    "export_model",
    "find_resume_checkpoint",
    "load_checkpoint",
    "load_conditioning",
    "log_spaced_steps",
    "make_optimizer",
    "model_costs",
    "resolve_cache_paths",
    "save_checkpoint",
    "step_generator",
    "train",
    "training_state_keys",
    "verify_checkpoint",
]
