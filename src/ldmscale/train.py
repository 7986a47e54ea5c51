"""The one trainer: trains a family member from scratch on cached latents and text embeddings.

``train(cfg)`` reads the latent cache and the caption-embedding cache (see
``ldmscale.cache``), builds ``UNetSpec(c, context_dim=D, context_len=T,
latent_channels=C, latent_size=h)`` from them, and optimises the pluggable
objective (``ldmscale.objectives``; text-to-image by default) with AdamW, a
linear LR warm-up (then constant or cosine), gradient clipping, an EMA of the
weights and optional bf16 autocast, on Hugging Face Accelerate (so
``accelerate launch`` / ``torchrun`` runs it multi-process unchanged).

Conventions:

- ``batch_size`` is the *global* batch; each of the P processes takes ``batch_size / P`` rows.
- Data order: the rows form one endless stream, the concatenation of permutations
  ``perm(seed, epoch)``; step ``s`` consumes stream positions ``[s*B, (s+1)*B)``.
- Randomness of step ``s`` on process ``p`` (posterior sample, noise, timesteps,
  caption-dropout mask) comes from a generator seeded with ``hash(seed, s, p)``.
  So resuming needs only the step count, and a run resumed from a checkpoint ends
  with bitwise the same weights as an uninterrupted run (same device, same process count).
- Training compute = normalized cost x iterations (the paper's Fig. 3 x-axis).

Run folder layout: see ``docs/architecture.md`` and ``docs/train.md``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ldmscale.config import Config, ConfigError
from ldmscale.family import UNetSpec, build_unet
from ldmscale.io import atomic_path, atomic_write_json, atomic_write_text, sha256_file
from ldmscale.objectives import PREDICTION_TYPES, build_objective, make_noise_scheduler
from ldmscale.provenance import code_version

MODEL_FORMAT = "ldmscale-model/1"
LR_SCHEDULES = ("constant", "cosine")
MIXED_PRECISIONS = ("no", "bf16", "fp16")
STATE_FILE = "training_state.pt"


class TrainError(ValueError):
    """A training run that cannot go on; the message says how to fix it."""


class TrainingDivergedError(TrainError):
    """The loss (or gradient norm) became NaN or infinite."""


class CheckpointError(TrainError):
    """A checkpoint is missing, incomplete or corrupt."""


class RunMismatchError(TrainError):
    """The run folder belongs to a run with a different config."""


@dataclass
class TrainConfig(Config):
    """Everything that determines a training run (and nothing that does not).

    Model: ``c`` (base width), ``layers_per_block``, ``heads`` (or a fixed ``head_dim``, see
    :class:`ldmscale.family.UNetSpec`); the context width/length and
    the latent shape come from the caches.
    Conditioning: either ``latents`` + ``embeddings`` (cache files), or ``data`` (a dataset
    folder) + ``vae`` + ``text_encoder`` (``TextEncoderSpec`` fields), from which the caches
    are built in ``cache_dir`` (default ``<run_dir>/cache``). ``vae`` (a diffusers
    ``AutoencoderKL`` folder) is always needed: it is copied into the exported model.
    Optimisation: ``lr`` (peak), ``warmup_steps`` (linear from 0), then ``lr_schedule``
    ``"constant"`` or ``"cosine"`` (to 0 at ``steps``); AdamW ``weight_decay``,
    ``adam_beta1/2``, ``adam_eps``; ``grad_clip`` (max global L2 norm, 0 = off);
    ``ema_decay`` (with warm-up ``min(ema_decay, (1+n)/(10+n))`` after n updates).
    ``batch_size`` is global (split over processes). ``caption_dropout`` in [0, 1).
    ``min_snr_gamma``: Min-SNR-gamma loss weighting (Hang et al. 2023; 0 = off, 5 typical).
    ``fused_adamw``: AdamW's fused kernel instead of its foreach loop (same update up to float
    rounding; see BENCHMARKS.md for what it buys).
    Bookkeeping: ``checkpoint_every``, ``keep_last`` checkpoints, ``log_every`` steps.
    """

    run_dir: str = "runs/t2i"
    c: int = 64
    layers_per_block: int = 2
    heads: int = 8
    head_dim: int = 0
    objective: str = "t2i"
    latents: str | None = None
    embeddings: str | None = None
    data: str | None = None
    resolution: int = 32
    vae: str | None = None
    text_encoder: dict[str, Any] | None = None
    cache_dir: str | None = None
    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-4
    warmup_steps: int = 100
    lr_schedule: str = "constant"
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    ema_decay: float = 0.9999
    grad_clip: float = 1.0
    mixed_precision: str = "no"
    caption_dropout: float = 0.1
    prediction_type: str = "epsilon"
    min_snr_gamma: float = 0.0
    seed: int = 0
    checkpoint_every: int = 500
    keep_last: int = 2
    log_every: int = 10
    eval_steps: tuple[int, ...] = ()
    fused_adamw: bool = False

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"TrainConfig.{name}={getattr(self, name)!r}: {why}")

        for name in ("steps", "batch_size", "checkpoint_every", "keep_last", "log_every"):
            if getattr(self, name) < 1:
                raise bad(name, "must be >= 1")
        if self.warmup_steps < 0:
            raise bad("warmup_steps", "must be >= 0")
        if self.lr <= 0 or not math.isfinite(self.lr):
            raise bad("lr", "must be a positive finite number")
        if self.lr_schedule not in LR_SCHEDULES:
            raise bad("lr_schedule", f"must be one of {list(LR_SCHEDULES)}")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise bad("mixed_precision", f"must be one of {list(MIXED_PRECISIONS)}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise bad("prediction_type", f"must be one of {list(PREDICTION_TYPES)}")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise bad("caption_dropout", "must be in [0, 1)")
        if not 0.0 <= self.ema_decay < 1.0:
            raise bad("ema_decay", "must be in [0, 1)")
        if self.grad_clip < 0:
            raise bad("grad_clip", "must be >= 0 (0 turns clipping off)")
        if self.min_snr_gamma < 0:
            raise bad("min_snr_gamma", "must be >= 0 (0 turns min-SNR weighting off)")

    def unet_spec(self, context_dim: int, context_len: int, channels: int, size: int) -> UNetSpec:
        return UNetSpec(
            c=self.c,
            context_dim=context_dim,
            context_len=context_len,
            latent_channels=channels,
            latent_size=size,
            layers_per_block=self.layers_per_block,
            heads=self.heads,
            head_dim=self.head_dim,
        )


# ----------------------------------------------------------------------------- determinism


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from a hash of ``parts`` (e.g. ``(seed, "step", s, rank)``)."""
    text = json.dumps([str(p) for p in parts])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") & (2**63 - 1)


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """The CPU generator all of step ``step``'s randomness on process ``rank`` comes from."""
    return torch.Generator().manual_seed(derive_seed(seed, "step", step, rank))


class DataOrder:
    """Endless stream of row indices: permutation ``perm(seed, epoch)`` after permutation."""

    def __init__(self, n: int, seed: int):
        self.n = n
        self.seed = seed
        self._perms: dict[int, torch.Tensor] = {}

    def perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.pop(min(self._perms))
            g = torch.Generator().manual_seed(derive_seed(self.seed, "epoch", epoch))
            self._perms[epoch] = torch.randperm(self.n, generator=g)
        return self._perms[epoch]

    def indices(self, step: int, global_batch: int, rank: int, world: int) -> torch.Tensor:
        """Rows of process ``rank``'s share of step ``step``'s global batch."""
        local = global_batch // world
        start = step * global_batch + rank * local
        pos = torch.arange(start, start + local)
        out = torch.empty(local, dtype=torch.long)
        epochs = pos // self.n
        for e in epochs.unique().tolist():
            m = epochs == e
            out[m] = self.perm(int(e))[pos[m] % self.n]
        return out


# ----------------------------------------------------------------------------- EMA


class EMA:
    """Exponential moving average of a model's weights, held in a full model copy.

    Own implementation rather than diffusers' ``EMAModel``: the average lives in a real
    ``UNet2DConditionModel``, so it is saved with ``save_pretrained`` as ``unet_ema/``
    (loadable by diffusers) and restored from that folder on resume; the training state
    file then needs only the update count, not a second copy of all weights (3.5 GB per
    checkpoint at c=320). Decay after ``n`` updates: ``min(decay, (1 + n) / (10 + n))``
    (diffusers' default warm-up), so short runs are not dominated by the initial weights.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.num_updates = 0

    def current_decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        d = self.current_decay()
        src = [p.detach() for p in model.parameters()]
        dst = list(self.model.parameters())
        torch._foreach_lerp_(dst, [s.to(p.dtype) for s, p in zip(src, dst)], 1.0 - d)
        self.num_updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "num_updates": self.num_updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.num_updates = int(state["num_updates"])


# ----------------------------------------------------------------------------- caches


@dataclass
class Conditioning:
    """The in-memory training data: per-row tensors and the constants the objective needs."""

    rows: dict[str, torch.Tensor]
    null_embedding: torch.Tensor
    scaling_factor: float
    text_encoder: dict[str, Any] | None = None
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return next(iter(self.rows.values())).shape[0]


def _read_safetensors(path: Path, what: str, fix: str) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open

    if not path.is_file():
        raise TrainError(f"{what} not found: {path}. {fix}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as e:  # safetensors raises its own error types
        raise TrainError(f"{what} {path} cannot be read ({e}). {fix}") from e
    return tensors, meta


def load_conditioning(latents: str | Path, embeddings: str | Path) -> Conditioning:
    """Read and check the latent cache and the caption-embedding cache (row i = record i)."""
    fix = "Rebuild the caches (ldmscale.cache) or fix the path in the train config."
    lat, lat_meta = _read_safetensors(Path(latents), "latent cache", fix)
    emb, emb_meta = _read_safetensors(Path(embeddings), "embedding cache", fix)
    for key in ("latent_mean", "latent_std"):
        if key not in lat or lat[key].ndim != 4:
            raise TrainError(f"latent cache {latents}: needs a 4-d tensor '{key}' [N,C,h,w]. {fix}")
    if lat["latent_mean"].shape != lat["latent_std"].shape:
        raise TrainError(f"latent cache {latents}: latent_mean and latent_std shapes differ")
    if "scaling_factor" not in lat_meta:
        raise TrainError(f"latent cache {latents}: metadata lacks 'scaling_factor'. {fix}")
    for key, nd in (("embeddings", 3), ("null_embedding", 3)):
        if key not in emb or emb[key].ndim != nd:
            raise TrainError(f"embedding cache {embeddings}: needs a 3-d tensor '{key}'. {fix}")
    n_lat, n_emb = lat["latent_mean"].shape[0], emb["embeddings"].shape[0]
    if n_lat != n_emb:
        raise TrainError(
            f"latent cache {latents} has {n_lat} rows but embedding cache {embeddings} has "
            f"{n_emb}; both must come from the same dataset (row i = record i). {fix}"
        )
    if emb["null_embedding"].shape != (1, *emb["embeddings"].shape[1:]):
        raise TrainError(
            f"embedding cache {embeddings}: null_embedding must be [1,T,D] matching embeddings"
        )
    text_encoder = None
    if "encoder_spec" in emb_meta:  # written by ldmscale.cache.build_embedding_cache
        try:
            text_encoder = json.loads(emb_meta["encoder_spec"])
        except json.JSONDecodeError:
            text_encoder = None
    return Conditioning(
        rows={
            "latent_mean": lat["latent_mean"].float().contiguous(),
            "latent_std": lat["latent_std"].float().contiguous(),
            "embeddings": emb["embeddings"].float().contiguous(),
        },
        null_embedding=emb["null_embedding"].float(),
        scaling_factor=float(lat_meta["scaling_factor"]),
        text_encoder=text_encoder,
        sources={"latents": str(latents), "embeddings": str(embeddings)},
    )


def resolve_cache_paths(cfg: TrainConfig, progress: bool = True) -> tuple[Path, Path]:
    """The two cache files: given in the config, or built from ``data`` + ``vae`` + ``text_encoder``."""
    if cfg.latents and cfg.embeddings:
        return Path(cfg.latents), Path(cfg.embeddings)
    if cfg.latents or cfg.embeddings:
        raise ConfigError(
            "TrainConfig: give both 'latents' and 'embeddings' cache files, or neither "
            "(and then 'data' + 'vae' + 'text_encoder' to build them)"
        )
    if not cfg.data:
        raise ConfigError(
            "TrainConfig: no training data; set 'latents' + 'embeddings' (cache files), or "
            "'data' (a dataset folder) + 'vae' + 'text_encoder'"
        )
    if not cfg.vae:
        raise ConfigError(
            "TrainConfig: 'data' needs 'vae' (an AutoencoderKL folder) to encode images"
        )
    try:
        from ldmscale.cache import prepare_conditioning
        from ldmscale.data import load_dataset
        from ldmscale.text import TextEncoderSpec
    except ImportError as e:
        raise ConfigError(
            f"building caches from 'data' needs ldmscale.cache / ldmscale.data / ldmscale.text "
            f"({e}); build the caches first and set 'latents' + 'embeddings'"
        ) from e
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else Path(cfg.run_dir) / "cache"
    dataset = load_dataset(cfg.data, split="train", resolution=cfg.resolution)
    prepared = prepare_conditioning(
        dataset,
        cfg.vae,
        TextEncoderSpec.from_dict(cfg.text_encoder or {}),
        cache_dir,
        progress=progress,
    )
    return Path(prepared.latents_path), Path(prepared.embeddings_path)


# ----------------------------------------------------------------------------- run folder


def _checkpoint_dirs(ckdir: Path) -> list[Path]:
    """Complete-looking checkpoint folders, newest first."""
    if not ckdir.is_dir():
        return []
    dirs = [p for p in ckdir.glob("step-*") if p.is_dir() and p.name[5:].isdigit()]
    return sorted(dirs, key=lambda p: int(p.name[5:]), reverse=True)


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """Check every file against the sizes and SHA-256 sums in ``meta.json``; return the meta."""
    fix = (
        f"Delete {path} to resume from the previous checkpoint, or rerun with --overwrite to "
        "start the run afresh."
    )
    meta_path = path / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
        files = meta["files"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(
            f"checkpoint {path}: {meta_path} is missing or unreadable ({e}). {fix}"
        ) from e
    for rel, info in files.items():
        f = path / rel
        if not f.is_file():
            raise CheckpointError(f"checkpoint {path}: file {f} is missing. {fix}")
        size = f.stat().st_size
        if size != info["size"]:
            raise CheckpointError(
                f"checkpoint {path}: file {f} has {size} bytes, expected {info['size']} "
                f"(truncated or overwritten). {fix}"
            )
        if sha256_file(f) != info["sha256"]:
            raise CheckpointError(f"checkpoint {path}: file {f} fails its SHA-256 check. {fix}")
    return meta


def find_resume_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint that verifies; warns about and skips corrupt newer ones.

    Returns None when the run has no checkpoint; raises :class:`CheckpointError` when it
    has some but none is complete.
    """
    ckdir = run_dir / "checkpoints"
    candidates = _checkpoint_dirs(ckdir)
    latest_file = ckdir / "LATEST"
    if latest_file.is_file():
        name = latest_file.read_text().strip()
        if not (ckdir / name).is_dir():
            warnings.warn(
                f"{latest_file} names {name!r}, which does not exist; using the newest complete "
                "checkpoint instead",
                stacklevel=2,
            )
    problems = []
    for path in candidates:
        try:
            verify_checkpoint(path)
        except CheckpointError as e:
            problems.append(str(e))
            warnings.warn(f"{e} Falling back to an earlier checkpoint.", stacklevel=2)
            continue
        return path
    if problems:
        raise CheckpointError(
            f"run {run_dir} has checkpoints but none is complete:\n  "
            + "\n  ".join(problems)
            + f"\nRerun with --overwrite to start afresh (this deletes {ckdir})."
        )
    return None


def claim_run_dir(run_dir: Path, cfg: TrainConfig, overwrite: bool) -> None:
    """Create the run folder, or check that it belongs to ``cfg`` (refuse to mix runs)."""
    cfg_file = run_dir / "train_config.json"
    ours = ("train_config.json", "log.jsonl", "checkpoints", "model", EVALS_DIR)
    if overwrite:
        for name in ours:
            p = run_dir / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    if cfg_file.is_file():
        try:
            old = TrainConfig.from_dict(json.loads(cfg_file.read_text()))
        except (json.JSONDecodeError, ConfigError) as e:
            raise RunMismatchError(
                f"{cfg_file} is unreadable ({e}); use another run_dir or rerun with --overwrite"
            ) from e
        a, b = old.to_dict(), cfg.to_dict()
        a.pop("run_dir"), b.pop("run_dir")  # a run folder may be moved or copied, and resumed
        if a != b:
            diff = {
                k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)
            }
            raise RunMismatchError(
                f"run folder {run_dir} holds a run with a different config "
                f"(differences, existing -> requested: {diff}). Use another run_dir, or rerun with "
                "--overwrite to delete that run and start afresh"
            )
        return
    if any((run_dir / n).exists() for n in ours[1:]):
        raise RunMismatchError(
            f"{run_dir} has training outputs but no train_config.json, so it cannot be resumed; "
            "use another run_dir or rerun with --overwrite"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(cfg_file)


def _trim_log(log_path: Path, last_step: int) -> None:
    """Keep only complete log lines with ``step <= last_step`` (dedupe after a resume)."""
    if not log_path.is_file():
        return
    keep = []
    for line in log_path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by a kill
        if isinstance(rec, dict) and rec.get("step", math.inf) <= last_step:
            keep.append(line)
    atomic_write_text(log_path, "".join(k + "\n" for k in keep))


def _append_line(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line with a single write, then fsync (a kill leaves whole lines)."""
    data = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- kept checkpoints (Fig. 3)

EVALS_DIR = "evals"


def log_spaced_steps(total: int, n: int, first: int) -> tuple[int, ...]:
    """``n`` distinct training steps, sorted, roughly geometric from ``first`` to ``total``.

    The last step is always ``total``; rounding collisions are pushed apart by one step, so
    the result has exactly ``n`` entries (``n <= total - first + 1`` is required). Use it for
    ``TrainConfig.eval_steps`` (the paper's Fig. 3 samples checkpoints on a log axis).
    """
    if total < 1 or first < 1 or first > total:
        raise ValueError(
            f"log_spaced_steps: need 1 <= first <= total, got first={first}, total={total}"
        )
    if n < 1 or n > total - first + 1:
        raise ValueError(
            f"log_spaced_steps: n={n} must be in [1, {total - first + 1}] "
            f"(the number of steps from {first} to {total})"
        )
    if n == 1:
        return (total,)
    ratio = total / first
    raw = [round(first * ratio ** (i / (n - 1))) for i in range(n)]
    out = []
    for v in raw:  # strictly increasing ...
        out.append(max(v, out[-1] + 1) if out else v)
    for i in range(n - 1, -1, -1):  # ... and never past total (room for the later ones)
        out[i] = min(out[i], total - (n - 1 - i))
    return tuple(out)


def check_eval_steps(cfg: TrainConfig) -> tuple[int, ...]:
    """``cfg.eval_steps`` validated (each in ``[1, cfg.steps]``, no repeats), sorted."""
    steps = tuple(int(s) for s in cfg.eval_steps)
    bad = [s for s in steps if not 1 <= s <= cfg.steps]
    if bad:
        raise ConfigError(
            f"TrainConfig.eval_steps: steps {bad} are outside [1, steps={cfg.steps}]; "
            "e.g. use ldmscale.train.log_spaced_steps(steps, n, first)"
        )
    if len(set(steps)) != len(steps):
        raise ConfigError(f"TrainConfig.eval_steps={list(steps)} has repeated steps")
    return tuple(sorted(steps))


def eval_dir(run_dir: str | Path, step: int) -> Path:
    """The kept EMA model of step ``step``: ``<run_dir>/evals/step-<NNNNNNN>/``."""
    return Path(run_dir) / EVALS_DIR / f"step-{step:07d}"


def export_is_complete(folder: Path) -> bool:
    """True when ``folder`` is a finished model export (it is written atomically, its
    ``ldmscale_model.json`` last inside the temporary folder)."""
    info = folder / "ldmscale_model.json"
    unet = folder / "unet" / "diffusion_pytorch_model.safetensors"
    if not (info.is_file() and unet.is_file()):
        return False
    try:
        return isinstance(json.loads(info.read_text()).get("train_step"), int)
    except (OSError, json.JSONDecodeError):
        return False


def training_state_keys(cfg: TrainConfig, train_step: int, norm_cost: float) -> dict[str, Any]:
    """The keys every exported model's ``ldmscale_model.json`` carries about its training:
    ``train_step``, ``total_steps`` (``cfg.steps``), ``train_compute`` (norm cost x
    ``train_step``, the paper's Fig. 3 axis), ``images_seen`` (``train_step x batch_size``),
    ``seed`` (``cfg.seed``) and ``run`` (the run folder's name)."""
    return {
        "train_step": int(train_step),
        "total_steps": int(cfg.steps),
        "train_compute": float(norm_cost) * int(train_step),
        "images_seen": int(train_step) * int(cfg.batch_size),
        "seed": int(cfg.seed),
        "run": Path(cfg.run_dir).resolve().name,
    }


# ----------------------------------------------------------------------------- costs


def model_costs(spec: UNetSpec) -> dict[str, float]:
    """``norm_cost`` (vs c=320, xla convention), ``gflops_xla``, ``gflops_dense``: one forward, batch 1."""
    from ldmscale.family import count_gflops, normalized_cost

    return {
        "norm_cost": float(normalized_cost(spec)),
        "gflops_xla": float(count_gflops(spec, convention="xla")),
        "gflops_dense": float(count_gflops(spec, convention="dense")),
    }


# ----------------------------------------------------------------------------- trainer


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.AdamW:
    """AdamW with the config's hyper-parameters: fused kernel or foreach loop (``fused_adamw``).

    Either way one vectorised update over all tensors, never the per-tensor Python loop.
    """
    return torch.optim.AdamW(
        params,
        lr=cfg.lr,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_eps,
        weight_decay=cfg.weight_decay,
        foreach=None if cfg.fused_adamw else True,
        fused=True if cfg.fused_adamw else None,
    )


def _make_accelerator(cfg: TrainConfig):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    state = AcceleratorState._shared_state
    if not distributed and state and state.get("_mixed_precision") != cfg.mixed_precision:
        # A second run in the same (single) process with another precision: start fresh.
        AcceleratorState._reset_state(reset_partial_state=True)
    cpu = not torch.accelerator.is_available()
    return Accelerator(mixed_precision=cfg.mixed_precision, cpu=cpu)


def _params_fingerprint(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        vals = [p.detach().double() for p in model.parameters()]
        return torch.stack([sum(v.sum() for v in vals), sum(v.abs().sum() for v in vals)])


def train(
    cfg: TrainConfig,
    *,
    overwrite: bool = False,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> Path:
    """Train (or resume) the run ``cfg.run_dir`` to ``cfg.steps`` and export ``<run>/model/``.

    Rerunning with the same config resumes from the newest complete checkpoint; a
    different config on an existing run folder raises :class:`RunMismatchError` unless
    ``overwrite``. ``on_step(step)`` is called after every optimisation step (step counted
    from 1). Returns the run folder.
    """
    from accelerate.utils import broadcast_object_list
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    accelerator = _make_accelerator(cfg)
    rank, world = accelerator.process_index, accelerator.num_processes
    is_main = accelerator.is_main_process
    run_dir = Path(cfg.run_dir)
    ckdir = run_dir / "checkpoints"

    if cfg.batch_size % world:
        raise ConfigError(
            f"TrainConfig.batch_size={cfg.batch_size} is the global batch and must be divisible "
            f"by the number of processes ({world})"
        )
    if not cfg.vae:
        raise ConfigError(
            "TrainConfig.vae is required: the exported model folder includes the autoencoder "
            "(a diffusers AutoencoderKL folder) whose latents the caches hold"
        )
    if not Path(cfg.vae).is_dir():
        raise ConfigError(f"TrainConfig.vae: autoencoder folder not found: {cfg.vae}")
    eval_steps = set(check_eval_steps(cfg))

    # Run folder and resume point (main process decides; the others follow).
    if is_main:
        claim_run_dir(run_dir, cfg, overwrite)
        for tmp in ckdir.glob(".step-*.tmp") if ckdir.is_dir() else []:
            shutil.rmtree(tmp, ignore_errors=True)  # half-written checkpoints of a killed run
    accelerator.wait_for_everyone()
    resume = find_resume_checkpoint(run_dir) if is_main else None
    resume_name = [resume.name if resume else ""]
    if world > 1:
        broadcast_object_list(resume_name)
    resume = ckdir / resume_name[0] if resume_name[0] else None

    # Data.
    paths = [str(p) for p in resolve_cache_paths(cfg, progress=progress)] if is_main else ["", ""]
    if world > 1:
        broadcast_object_list(paths)  # the other processes read what the main one built
    lat_path, emb_path = Path(paths[0]), Path(paths[1])
    cond = load_conditioning(lat_path, emb_path)
    n_rows, ch, h, w = cond.rows["latent_mean"].shape
    _, t_len, d_ctx = cond.rows["embeddings"].shape
    if h != w:
        raise TrainError(f"latent cache {lat_path}: latents must be square, got {h}x{w}")
    spec = cfg.unet_spec(context_dim=d_ctx, context_len=t_len, channels=ch, size=h)
    order = DataOrder(n_rows, cfg.seed)

    # Model, EMA, optimiser, LR schedule (same init on every process).
    torch.manual_seed(derive_seed(cfg.seed, "init"))
    unet = build_unet(spec)
    ema = EMA(unet, cfg.ema_decay)
    optimizer = make_optimizer(cfg, unet.parameters())
    lr_sched = get_scheduler(
        "constant_with_warmup" if cfg.lr_schedule == "constant" else "cosine",
        optimizer,
        num_warmup_steps=cfg.warmup_steps,
        num_training_steps=cfg.steps,
    )
    start_step, wall_offset = 0, 0.0
    acc_loss, acc_n = 0.0, 0
    if resume is not None:
        st = _load_checkpoint(resume, unet, ema, optimizer, lr_sched)
        start_step = int(st["step"])
        wall_offset = float(st["wall_time"])
        acc_loss, acc_n = float(st["log_accumulator"][0]), int(st["log_accumulator"][1])
        if is_main:
            print(f"ldmscale train: resuming {run_dir} from {resume.name}", file=sys.stderr)
    if is_main:
        _trim_log(run_dir / "log.jsonl", start_step)

    unet, optimizer = accelerator.prepare(unet, optimizer)
    raw_unet = accelerator.unwrap_model(unet)
    objective = build_objective(
        cfg.objective,
        null_embedding=cond.null_embedding,
        scaling_factor=cond.scaling_factor,
        prediction_type=cfg.prediction_type,
        caption_dropout=cfg.caption_dropout,
        min_snr_gamma=cfg.min_snr_gamma,
    )
    missing = [k for k in objective.required_keys if k not in cond.rows]
    if missing:
        raise TrainError(f"objective {cfg.objective!r} needs cached tensors {missing}")

    costs = model_costs(spec) if is_main else {}
    if is_main:
        _restore_past_evals(
            run_dir, sorted(s for s in eval_steps if s <= start_step), cfg, spec, cond, costs
        )
    t0 = time.time()
    bar = tqdm(
        total=cfg.steps,
        initial=start_step,
        desc=f"train c={cfg.c}",
        disable=not (progress and is_main),
        dynamic_ncols=True,
    )
    unet.train()
    for step in range(start_step, cfg.steps):
        idx = order.indices(step, cfg.batch_size, rank, world)
        batch = {k: v[idx].to(accelerator.device) for k, v in cond.rows.items()}
        gen = step_generator(cfg.seed, step, rank)
        lr_now = lr_sched.get_last_lr()[0]
        loss = objective.loss(unet, batch, gen)
        mean_loss = accelerator.reduce(loss.detach().float().reshape(1), "mean")
        loss_value = float(mean_loss.item())
        if not math.isfinite(loss_value):
            raise TrainingDivergedError(
                f"loss became {loss_value} at step {step + 1} (lr={lr_now:.3g}); the run stopped "
                f"and its last good checkpoint in {ckdir} is intact. Lower 'lr', raise "
                "'warmup_steps' or set 'grad_clip', then rerun with --overwrite (or a new run_dir)"
            )
        accelerator.backward(loss)
        if cfg.grad_clip > 0:
            norm = accelerator.clip_grad_norm_(unet.parameters(), cfg.grad_clip)
            if not math.isfinite(float(norm)):
                raise TrainingDivergedError(
                    f"gradient norm became {float(norm)} at step {step + 1} (lr={lr_now:.3g}); "
                    f"the last good checkpoint in {ckdir} is intact. Lower 'lr' or raise "
                    "'warmup_steps', then rerun with --overwrite (or a new run_dir)"
                )
        optimizer.step()
        lr_sched.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(raw_unet)
        done = step + 1
        acc_loss += loss_value
        acc_n += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}")

        if is_main and (done % cfg.log_every == 0 or done == cfg.steps):
            _append_line(
                run_dir / "log.jsonl",
                {
                    "step": done,
                    "loss": acc_loss / acc_n,
                    "lr": lr_now,
                    "images_seen": done * cfg.batch_size,
                    "train_compute": costs["norm_cost"] * done,
                    "wall_time": wall_offset + time.time() - t0,
                },
            )
        if done % cfg.log_every == 0 or done == cfg.steps:
            acc_loss, acc_n = 0.0, 0
        if is_main and done in eval_steps and not export_is_complete(eval_dir(run_dir, done)):
            # Before this step's checkpoint: a kill in between redoes the step and the export.
            export_model(
                eval_dir(run_dir, done), ema.model, cfg, spec, cond, costs, train_step=done
            )
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            fp = accelerator.gather(_params_fingerprint(raw_unet).reshape(1, 2))
            if world > 1 and not bool((fp == fp[0]).all()):
                raise TrainError(
                    f"process weights diverged at step {done} (fingerprints {fp.tolist()}); "
                    "this is a bug in the distributed setup"
                )
            if is_main:
                state = {
                    "step": done,
                    "images_seen": done * cfg.batch_size,
                    "epoch": (done * cfg.batch_size) // n_rows,
                    "optimizer": optimizer.state_dict(),
                    "lr_scheduler": lr_sched.state_dict(),
                    "ema": ema.state_dict(),
                    "wall_time": wall_offset + time.time() - t0,
                    "log_accumulator": [acc_loss, acc_n],
                    "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
                }
                _save_checkpoint(ckdir, done, raw_unet, ema, state, cfg, world)
            accelerator.wait_for_everyone()
        if on_step is not None:
            on_step(done)
    bar.close()

    if is_main:
        export_model(run_dir / "model", ema.model, cfg, spec, cond, costs)
    accelerator.wait_for_everyone()
    return run_dir


def _restore_past_evals(
    run_dir: Path, steps: list[int], cfg: TrainConfig, spec: UNetSpec, cond: Conditioning, costs
) -> None:
    """On resume: re-export kept models of steps already trained whose folder is missing
    (deleted by hand), from the checkpoint of that step when it still exists; else warn."""
    for step in steps:
        out = eval_dir(run_dir, step)
        if export_is_complete(out):
            continue
        ck = run_dir / "checkpoints" / f"step-{step:07d}"
        try:
            verify_checkpoint(ck)
        except CheckpointError:
            warnings.warn(
                f"kept model {out} is missing and step {step} is behind the resume point with no "
                f"checkpoint left to rebuild it from; rerun with --overwrite to regenerate it",
                stacklevel=3,
            )
            continue
        from diffusers import UNet2DConditionModel

        ema_unet = UNet2DConditionModel.from_pretrained(ck / "unet_ema")
        export_model(out, ema_unet, cfg, spec, cond, costs, train_step=step)


def _save_checkpoint(ckdir: Path, step: int, unet, ema: EMA, state: dict, cfg, world: int) -> Path:
    name = f"step-{step:07d}"
    final = ckdir / name
    with atomic_path(final) as tmp:
        tmp.mkdir()
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        ema.model.save_pretrained(tmp / "unet_ema", safe_serialization=True)
        torch.save(state, tmp / STATE_FILE)
        files = {
            str(p.relative_to(tmp)): {"size": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(tmp.rglob("*"))
            if p.is_file()
        }
        meta = {
            "step": step,
            "images_seen": state["images_seen"],
            "num_processes": world,
            "replicas_in_sync": True,
            "code_version": code_version(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "files": files,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    atomic_write_text(ckdir / "LATEST", name + "\n")
    for old in _checkpoint_dirs(ckdir)[cfg.keep_last :]:
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _load_checkpoint(path: Path, unet, ema: EMA, optimizer, lr_sched) -> dict[str, Any]:
    from safetensors.torch import load_file

    def weights(sub: str) -> dict[str, torch.Tensor]:
        return load_file(str(path / sub / "diffusion_pytorch_model.safetensors"))

    try:
        unet.load_state_dict(weights("unet"))
        ema.model.load_state_dict(weights("unet_ema"))
        state = torch.load(path / STATE_FILE, weights_only=True, map_location="cpu")
        optimizer.load_state_dict(state["optimizer"])
        lr_sched.load_state_dict(state["lr_scheduler"])
        ema.load_state_dict(state["ema"])
    except (RuntimeError, KeyError, OSError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint {path} does not match this run ({e}); rerun with --overwrite to start afresh"
        ) from e
    rng = state.get("rng", {})
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    if "python" in rng:
        random.setstate(_to_tuple(rng["python"]))
    return state


def _to_tuple(x: Any) -> Any:
    return tuple(_to_tuple(v) for v in x) if isinstance(x, list | tuple) else x


def export_model(
    out: Path,
    ema_unet: torch.nn.Module,
    cfg: TrainConfig,
    spec: UNetSpec,
    cond: Conditioning,
    costs: dict[str, float],
    *,
    train_step: int | None = None,
) -> Path:
    """Write the model folder of the contract: unet/ (EMA), vae/, scheduler/, ldmscale_model.json.

    ``train_step`` (default ``cfg.steps``) is the step the weights belong to; the json gets
    :func:`training_state_keys` for it. The folder is written atomically (a kill leaves the
    old folder or none).
    """
    step = cfg.steps if train_step is None else int(train_step)
    text_encoder = cfg.text_encoder or cond.text_encoder
    if text_encoder is None:
        text_encoder = {"kind": "minilm", "path": None, "max_length": spec.context_len}
        warnings.warn(
            "train config names no text_encoder and the embedding cache does not record one; "
            f"the exported model assumes {text_encoder}",
            stacklevel=2,
        )
    with atomic_path(out) as tmp:
        tmp.mkdir()
        ema_unet.save_pretrained(tmp / "unet", safe_serialization=True)
        vae_dir = Path(cfg.vae)
        if not (vae_dir / "config.json").is_file() and (vae_dir / "vae" / "config.json").is_file():
            vae_dir = vae_dir / "vae"  # an SD pipeline folder: take its autoencoder only
        shutil.copytree(vae_dir, tmp / "vae", ignore=shutil.ignore_patterns(".*"))
        make_noise_scheduler(cfg.prediction_type).save_pretrained(tmp / "scheduler")
        atomic_write_json(
            tmp / "ldmscale_model.json",
            {
                "format": MODEL_FORMAT,
                "unet_spec": spec.to_dict(),
                "text_encoder": text_encoder,
                "prediction_type": cfg.prediction_type,
                "scaling_factor": cond.scaling_factor,
                "norm_cost": costs["norm_cost"],
                "gflops_xla": costs["gflops_xla"],
                "gflops_dense": costs["gflops_dense"],
                "train_steps": cfg.steps,
                **training_state_keys(cfg, step, costs["norm_cost"]),
                "train_config": cfg.to_dict(),
                "code_version": code_version(),
            },
        )
    return out
