"""The training loop: setup, then for each step: batch, loss, optimizer step, hooks, log,
checkpoint; at the end, the export.

Everything else lives in the modules beside this one: the config (``config.py``), where a
step's randomness and rows come from (``determinism.py``), the EMA (``ema.py``), checkpoints
(``checkpoint.py``), the run folder and its log (``rundir.py``), model exports (``export.py``);
what the loss is belongs to the objective (:mod:`ldmscale.objectives`), the cost of a forward
to :func:`ldmscale.family.model_costs`, the data to :mod:`ldmscale.cache`, and starting from a
trained model to :mod:`ldmscale.surgery`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ldmscale import cost
from ldmscale.cache import Conditioning, load_conditioning, load_hr_images, resolve_cache_paths
from ldmscale.config import ConfigError
from ldmscale.family import OVERRIDE_FIELDS, UNetSpec, build_unet, model_costs
from ldmscale.io import atomic_write_json
from ldmscale.modelfolder import ParentModel, parent_of
from ldmscale.objectives import Objective, SetupContext, build_objective
from ldmscale.train.checkpoint import (
    find_resume_checkpoint,
    load_checkpoint,
    params_fingerprint,
    remove_partial_checkpoints,
    save_checkpoint,
)
from ldmscale.train.config import (
    CheckpointError,
    TrainConfig,
    TrainError,
    TrainingDivergedError,
    check_eval_steps,
)
from ldmscale.train.determinism import DataOrder, derive_seed, step_generator
from ldmscale.train.ema import EMA
from ldmscale.train.export import eval_dir, export_is_complete, export_model, restore_past_evals
from ldmscale.train.rundir import LOG_FILE, PARENT_FILE, append_line, claim_run_dir, trim_log


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
    from tqdm.auto import tqdm

    run = _setup(cfg, overwrite, progress)
    bar = tqdm(
        total=cfg.steps,
        initial=run.start_step,
        desc=f"train c={cfg.c}",
        disable=not (progress and run.is_main),
        dynamic_ncols=True,
    )
    run.unet.train()
    for step in range(run.start_step, cfg.steps):
        batch = run.batch(step)
        generator = step_generator(cfg.seed, step, run.rank)
        lr_now = run.lr_sched.get_last_lr()[0]
        loss = run.objective.loss(run.unet, batch, generator)
        loss_value = _mean_loss(run, loss, step, lr_now)
        _optimizer_step(run, loss, step, lr_now)
        run.ema.update(run.raw_unet)
        run.objective.after_step(run.raw_unet)
        done = step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}")
        _log(run, done, loss_value, lr_now)
        _export_kept(run, done)
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            _checkpoint(run, done)
        if on_step is not None:
            on_step(done)
    bar.close()
    if run.is_main:
        export_model(
            run.run_dir / "model", run.ema.model, cfg, run.spec, run.cond, run.costs,
            hints=run.objective.export_hints(), parent=run.parent,
        )  # fmt: skip
    run.accelerator.wait_for_everyone()
    return run.run_dir


@dataclass
class _Run:
    """What one run holds while it trains (built by :func:`_setup`)."""

    cfg: TrainConfig
    accelerator: Any
    run_dir: Path
    cond: Conditioning
    spec: UNetSpec
    order: DataOrder
    objective: Objective
    unet: torch.nn.Module  # as prepared by Accelerate (maybe DDP-wrapped)
    raw_unet: torch.nn.Module  # the same model, unwrapped
    ema: EMA
    optimizer: torch.optim.Optimizer
    lr_sched: Any
    costs: dict[str, float]
    eval_steps: set[int]
    parent: ParentModel | None = None
    start_step: int = 0
    wall_offset: float = 0.0
    acc_loss: float = 0.0  # the log interval's summed loss and step count
    acc_n: int = 0
    t0: float = 0.0

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def ckdir(self) -> Path:
        return self.run_dir / "checkpoints"

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        """This process's rows of step ``step``, on its device."""
        idx = self.order.indices(step, self.cfg.batch_size, self.rank, self.world)
        return {k: v[idx].to(self.accelerator.device) for k, v in self.cond.rows.items()}

    def wall_time(self) -> float:
        return self.wall_offset + time.time() - self.t0


# ----------------------------------------------------------------------------- one step


def _mean_loss(run: _Run, loss: torch.Tensor, step: int, lr_now: float) -> float:
    """The loss averaged over processes; stop the run before the update if it is not finite."""
    mean_loss = run.accelerator.reduce(loss.detach().float().reshape(1), "mean")
    value = float(mean_loss.item())
    if not math.isfinite(value):
        raise TrainingDivergedError(
            f"loss became {value} at step {step + 1} (lr={lr_now:.3g}); the run stopped "
            f"and its last good checkpoint in {run.ckdir} is intact. Lower 'lr', raise "
            "'warmup_steps' or set 'grad_clip', then rerun with --overwrite (or a new run_dir)"
        )
    return value


def _optimizer_step(run: _Run, loss: torch.Tensor, step: int, lr_now: float) -> None:
    """Backward, gradient clipping (stop on a non-finite norm), AdamW and LR schedule steps."""
    cfg = run.cfg
    run.accelerator.backward(loss)
    if cfg.grad_clip > 0:
        norm = run.accelerator.clip_grad_norm_(run.unet.parameters(), cfg.grad_clip)
        if not math.isfinite(float(norm)):
            raise TrainingDivergedError(
                f"gradient norm became {float(norm)} at step {step + 1} (lr={lr_now:.3g}); "
                f"the last good checkpoint in {run.ckdir} is intact. Lower 'lr' or raise "
                "'warmup_steps', then rerun with --overwrite (or a new run_dir)"
            )
    run.optimizer.step()
    run.lr_sched.step()
    run.optimizer.zero_grad(set_to_none=True)


def _log(run: _Run, done: int, loss_value: float, lr_now: float) -> None:
    """Add the step's loss to the interval; at its end, append one line to ``log.jsonl``."""
    cfg = run.cfg
    run.acc_loss += loss_value
    run.acc_n += 1
    if not (done % cfg.log_every == 0 or done == cfg.steps):
        return
    if run.is_main:
        append_line(
            run.run_dir / LOG_FILE,
            {
                "step": done,
                "loss": run.acc_loss / run.acc_n,
                "lr": lr_now,
                "images_seen": done * cfg.batch_size,
                "train_compute": cost.train_compute(
                    run.costs["norm_cost"], done, run.objective.extra_forwards_per_step
                ),
                "wall_time": run.wall_time(),
            },
        )
    run.acc_loss, run.acc_n = 0.0, 0


def _export_kept(run: _Run, done: int) -> None:
    """Export the EMA model of a kept step (``eval_steps``) unless a complete one exists."""
    if (
        run.is_main
        and done in run.eval_steps
        and not export_is_complete(eval_dir(run.run_dir, done))
    ):
        # Before this step's checkpoint: a kill in between redoes the step and the export.
        export_model(
            eval_dir(run.run_dir, done), run.ema.model, run.cfg, run.spec, run.cond, run.costs,
            train_step=done, hints=run.objective.export_hints(), parent=run.parent,
        )  # fmt: skip


def _checkpoint(run: _Run, done: int) -> None:
    """Check that the processes agree on the weights, then (main process) save a checkpoint."""
    fp = run.accelerator.gather(params_fingerprint(run.raw_unet).reshape(1, 2))
    if run.world > 1 and not bool((fp == fp[0]).all()):
        raise TrainError(
            f"process weights diverged at step {done} (fingerprints {fp.tolist()}); "
            "this is a bug in the distributed setup"
        )
    if run.is_main:
        state = {
            "step": done,
            "images_seen": done * run.cfg.batch_size,
            "optimizer": run.optimizer.state_dict(),
            "lr_scheduler": run.lr_sched.state_dict(),
            "ema": run.ema.state_dict(),
            "wall_time": run.wall_time(),
            "log_accumulator": [run.acc_loss, run.acc_n],
            "objective": run.objective.state_dict(),
        }
        save_checkpoint(run.ckdir, done, run.raw_unet, run.ema, state, run.cfg.keep_last, run.world)
    run.accelerator.wait_for_everyone()


# ----------------------------------------------------------------------------- setup


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


def _check_config(cfg: TrainConfig, world: int) -> None:
    """Refuse, before any work, what the run cannot do."""
    from ldmscale.surgery import model_unet_dir

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
    if cfg.teacher:
        model_unet_dir(cfg.teacher, "TrainConfig.teacher")


def _claim(cfg: TrainConfig, accelerator, overwrite: bool) -> Path | None:
    """Claim the run folder (main process) and agree on the checkpoint to resume from."""
    from accelerate.utils import broadcast_object_list

    run_dir = Path(cfg.run_dir)
    if accelerator.is_main_process:
        claim_run_dir(run_dir, cfg, overwrite)
        remove_partial_checkpoints(run_dir / "checkpoints")
    accelerator.wait_for_everyone()
    resume = find_resume_checkpoint(run_dir) if accelerator.is_main_process else None
    name = [resume.name if resume else ""]
    if accelerator.num_processes > 1:
        broadcast_object_list(name)
    return run_dir / "checkpoints" / name[0] if name[0] else None


def _load_data(cfg: TrainConfig, accelerator, progress: bool) -> Conditioning:
    """The caches (built by the main process when the config names a dataset), checked."""
    from accelerate.utils import broadcast_object_list

    paths = ["", ""]
    if accelerator.is_main_process:
        found = resolve_cache_paths(
            latents=cfg.latents,
            embeddings=cfg.embeddings,
            data=cfg.data,
            vae=cfg.vae,
            text_encoder=cfg.text_encoder,
            resolution=cfg.resolution,
            cache_dir=cfg.cache_dir or Path(cfg.run_dir) / "cache",
            progress=progress,
        )
        paths = [str(p) for p in found]
    if accelerator.num_processes > 1:
        broadcast_object_list(paths)  # the other processes read what the main one built
    return load_conditioning(Path(paths[0]), Path(paths[1]))


def _model_spec(cfg: TrainConfig, cond: Conditioning, objective: Objective) -> UNetSpec:
    """The UNetSpec for the data's shapes, with the objective's overrides."""
    _, ch, h, w = cond.rows["latent_mean"].shape
    _, t_len, d_ctx = cond.rows["embeddings"].shape
    if h != w:
        raise TrainError(f"latent cache: latents must be square, got {h}x{w}")
    missing = [k for k in objective.required_keys if k not in cond.rows]
    if missing:
        raise TrainError(f"objective {cfg.objective!r} needs cached tensors {missing}")
    overrides = objective.unet_overrides()
    unknown = sorted(set(overrides) - set(OVERRIDE_FIELDS))
    if unknown:
        raise TrainError(
            f"objective {cfg.objective!r} asks for UNet overrides {unknown}; "
            f"only {list(OVERRIDE_FIELDS)} exist"
        )
    spec = cfg.unet_spec(context_dim=d_ctx, context_len=t_len, channels=ch, size=h)
    return spec.replace(**overrides)


def parent_record(cfg: TrainConfig, fresh: bool, is_main: bool) -> ParentModel | None:
    """The ``init_from`` parent as it was when training started: hashed once at a fresh start
    and kept in ``<run>/parent.json``, which a resume reads (the parent folder may be gone by
    then; a run started before that file existed resumes without one). Only the main
    process, which exports, needs it; the others get None."""
    if not cfg.init_from or not is_main:
        return None
    path = Path(cfg.run_dir) / PARENT_FILE
    if fresh:
        parent = parent_of(cfg.init_from)
        atomic_write_json(path, parent.to_dict())
        return parent
    return ParentModel.from_dict(json.loads(path.read_text())) if path.is_file() else None


def _setup(cfg: TrainConfig, overwrite: bool, progress: bool) -> _Run:
    """Everything before the first step: checks, run folder, data, objective, model, EMA,
    optimizer, LR schedule, the resume point, the objective's setup."""
    from diffusers.optimization import get_scheduler

    from ldmscale.surgery import init_from, model_unet_dir

    accelerator = _make_accelerator(cfg)
    objective = build_objective(cfg)  # checks objective_options and teacher first
    _check_config(cfg, accelerator.num_processes)
    eval_steps = set(check_eval_steps(cfg))
    resume = _claim(cfg, accelerator, overwrite)
    if cfg.init_from and resume is None:
        model_unet_dir(cfg.init_from)  # a missing parent fails before the caches are built
    cond = _load_data(cfg, accelerator, progress)
    if "hr_uint8" in objective.required_keys:  # super-resolution degrades the HR images
        cond.rows["hr_uint8"] = load_hr_images(cfg.data, cfg.resolution, cond.n)
    spec = _model_spec(cfg, cond, objective)

    # Model, EMA, optimiser, LR schedule (same init on every process).
    torch.manual_seed(derive_seed(cfg.seed, "init"))
    unet = init_from(cfg.init_from, spec) if cfg.init_from and resume is None else build_unet(spec)
    ema = EMA(unet, cfg.ema_decay)
    optimizer = make_optimizer(cfg, unet.parameters())
    lr_sched = get_scheduler(
        "constant_with_warmup" if cfg.lr_schedule == "constant" else "cosine",
        optimizer,
        num_warmup_steps=cfg.warmup_steps,
        num_training_steps=cfg.steps,
    )
    state = load_checkpoint(resume, unet, ema, optimizer, lr_sched) if resume else {}
    if state and accelerator.is_main_process:
        print(f"ldmscale train: resuming {cfg.run_dir} from {resume.name}", file=sys.stderr)
    start_step = int(state.get("step", 0))
    if accelerator.is_main_process:
        trim_log(Path(cfg.run_dir) / LOG_FILE, start_step)

    unet, optimizer = accelerator.prepare(unet, optimizer)
    raw_unet = accelerator.unwrap_model(unet)
    objective.setup(SetupContext(raw_unet, spec, accelerator, cfg, cond, accelerator.device))
    if state:
        try:
            objective.load_state_dict(state.get("objective", {}))
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(
                f"checkpoint {resume}: the objective's state does not load ({e}); rerun with "
                "--overwrite to start afresh"
            ) from e
    run = _Run(
        cfg, accelerator, Path(cfg.run_dir), cond, spec, DataOrder(cond.n, cfg.seed), objective,
        unet, raw_unet, ema, optimizer, lr_sched,
        costs=(
            {**model_costs(spec), "extra_forwards_per_step": objective.extra_forwards_per_step}
            if accelerator.is_main_process
            else {}
        ),
        eval_steps=eval_steps,
        parent=parent_record(cfg, resume is None, accelerator.is_main_process),
        start_step=start_step,
        wall_offset=float(state.get("wall_time", 0.0)),
        acc_loss=float(state.get("log_accumulator", [0.0, 0])[0]),
        acc_n=int(state.get("log_accumulator", [0.0, 0])[1]),
    )  # fmt: skip
    if run.is_main:
        past = sorted(s for s in eval_steps if s <= start_step)
        hints = objective.export_hints()
        restore_past_evals(run.run_dir, past, cfg, spec, cond, run.costs, hints, run.parent)
    run.t0 = time.time()
    return run
