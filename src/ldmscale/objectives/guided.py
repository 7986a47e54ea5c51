"""Guided and progressive distillation (``objective = "guided"``, Meng et al. 2023; Salimans &
Ho 2022), as two stages of one objective.

Both stages train a **guidance-conditioned student**: ``w`` reaches the UNet as
``timestep_cond = guidance_scale_embedding(w - 1, guidance_dim)`` (the UNet override
``time_cond_proj_dim``; grown from a parent without one at zero by :mod:`ldmscale.surgery`, so
the student starts as its parent at every ``w``), one forward per sampling step, no doubled
batch. ``w ~ U[w_min, w_max]`` per row (ldmscale's convention, 1 = none). Per step: a clean
latent ``z`` (a sample of the VAE posterior), noise, a timestep, ``w``, a caption-dropout mask
(drawn in that order), and ``x_t = sqrt(abar_t) z + sqrt(1 - abar_t) eps``.

* ``stage = "guidance"`` (stage one): ``t ~ U{0 .. 999}``; the target is the teacher's clean
  latent under classifier-free guidance, from ``u + w (c - u)`` of one forward of the doubled
  batch (``u`` the empty caption's prediction). The teacher is a text-to-image model.
* ``stage = "progressive"`` (stage two, Salimans & Ho's target): the student samples in ``N =
  steps`` steps on :func:`~ldmscale.samplers.explicit_grid` ``(N)``, the teacher in ``2N`` on
  ``explicit_grid(2N)`` (whose every other point is the student's grid). ``i ~ U{0 .. N-1}``,
  ``t = t_{i+1}``; two teacher DDIM steps ``t -> t' -> t''`` (``t'`` the teacher grid's point
  between, ``t'' = t_i``, or ``abar = 1`` for ``i = 0``) give ``z''``; the target is the clean
  latent from which one student DDIM step ``t -> t''`` lands on ``z''``:
  ``x~ = (z'' - (s''/s_t) x_t) / (a'' - (s''/s_t) a_t)`` (``a = sqrt(abar)``, ``s =
  sqrt(1 - abar)``; ``x~ = z''`` when ``abar'' = 1``; :func:`progressive_target`, tested in
  float64). The teacher is the previous stage (guidance-conditioned: one forward per teacher
  step at the row's ``w``; a teacher without the embedding runs CFG on the doubled batch).

Loss (both stages, Salimans & Ho's ``snr_trunc``): ``mean_rows(max(SNR_t, 1) * mean((x^ -
x~)^2))`` with ``x^`` the student's clean latent (from its epsilon or v prediction) and
``SNR_t = abar_t / (1 - abar_t)``, i.e. the larger of the x- and the epsilon-error.

Each stage is a run of the one trainer with ``init_from`` = its teacher (``ldmscale distill
--method guided`` chains them, :func:`guided_stage_configs`). The exported model (``task =
"distilled"``) carries SD's DDPM schedule as ``scheduler/`` and a ``sampler_hint`` naming the
``ddim_grid`` sampler, its step count and grid, and the guidance embedding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ldmscale.config import Config, ConfigError
from ldmscale.denoisers import guidance_scale_embedding
from ldmscale.objectives.base import (
    NUM_TRAIN_TIMESTEPS,
    ExportHints,
    Objective,
    SetupContext,
    load_teacher,
    make_noise_scheduler,
    read_options,
)
from ldmscale.objectives.consistency import _bcast, _check_prediction_type, x0_and_eps
from ldmscale.samplers import ddim_move, explicit_grid

if TYPE_CHECKING:
    from ldmscale.train.config import TrainConfig

STAGES = ("guidance", "progressive")


@dataclass
class GuidedOptions(Config):
    """``TrainConfig.objective_options`` of ``objective = "guided"``.

    stage: "guidance" (stage one: regress the teacher's CFG) | "progressive" (halve the steps).
    steps: the student's sampling steps N on ``explicit_grid(N)`` (progressive: the teacher
        takes 2N); for stage one, the steps of the exported sampler hint.
    w_min, w_max: the guidance range drawn per row (ldmscale's ``w``; 1 = none).
    guidance_dim: width of the guidance embedding (``time_cond_proj_dim``).
    """

    stage: str = "guidance"
    steps: int = 32
    w_min: float = 1.0
    w_max: float = 8.0
    guidance_dim: int = 256

    def check(self) -> None:
        def bad(why: str) -> ConfigError:
            return ConfigError(f"objective_options of 'guided': {why}")

        if self.stage not in STAGES:
            raise bad(f"stage={self.stage!r} must be one of {list(STAGES)}")
        if not 1 <= self.steps <= NUM_TRAIN_TIMESTEPS // 2:
            raise bad(f"steps={self.steps} must be in [1, {NUM_TRAIN_TIMESTEPS // 2}]")
        if not self.w_min <= self.w_max:
            raise bad(f"w_min={self.w_min} must be <= w_max={self.w_max}")
        if self.guidance_dim < 2:
            raise bad(f"guidance_dim={self.guidance_dim} must be >= 2")

    @property
    def teacher_forwards_per_step(self) -> int:
        """Teacher UNet forwards (batch rows) per row and training step: 2 (stage one: the
        doubled CFG batch; progressive: two DDIM steps of a guidance-conditioned teacher)."""
        return 2


def progressive_target(
    x_t: torch.Tensor, z2: torch.Tensor, abar_t: torch.Tensor, abar_2: torch.Tensor
) -> torch.Tensor:
    """The clean latent ``x~`` from which one DDIM step ``abar_t -> abar_2`` of ``x_t`` lands
    on ``z2`` (the teacher's two steps): ``(z2 - (s2/s_t) x_t) / (a2 - (s2/s_t) a_t)``;
    ``abar_*`` broadcastable to ``x_t``; at ``abar_2 = 1`` it is ``z2``."""
    ratio = ((1 - abar_2) / (1 - abar_t)) ** 0.5
    return (z2 - ratio * x_t) / (abar_2**0.5 - ratio * abar_t**0.5)


@dataclass
class Guided(Objective):
    """Guided (stage one) or progressive (stage two) distillation; see the module docstring."""

    opts: GuidedOptions
    scheduler: Any
    prediction_type: str = "epsilon"
    caption_dropout: float = 0.0
    name: str = "guided"
    required_keys: tuple[str, ...] = ("latent_mean", "latent_std", "embeddings")
    uses_teacher: bool = True

    def __post_init__(self) -> None:
        self.alphas_cumprod = self.scheduler.alphas_cumprod.float()
        self.teacher: torch.nn.Module | None = None
        self.null_embedding: torch.Tensor | None = None
        self.scaling_factor: float | None = None

    @property
    def solver_forwards_per_step(self) -> int:
        """UNet forwards per row and step besides the student's (the teacher's)."""
        return self.opts.teacher_forwards_per_step

    @property
    def extra_forwards_per_step(self) -> float:
        return float(self.solver_forwards_per_step)

    def unet_overrides(self) -> dict[str, int]:
        return {"time_cond_proj_dim": self.opts.guidance_dim}

    def setup(self, ctx: SetupContext) -> None:
        self.null_embedding = ctx.cond.null_embedding
        self.scaling_factor = float(ctx.cond.scaling_factor)
        self.alphas_cumprod = self.alphas_cumprod.to(ctx.device)
        _check_prediction_type(ctx.cfg.teacher, self.prediction_type)
        self.teacher = load_teacher(ctx.cfg.teacher, ctx.device)

    def loss(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> torch.Tensor:
        if self.teacher is None or self.null_embedding is None or self.scaling_factor is None:
            raise RuntimeError("Guided needs setup() before loss()")
        o = self.opts
        mean, std, emb = batch["latent_mean"], batch["latent_std"], batch["embeddings"]
        dev, b = mean.device, mean.shape[0]
        # Fixed draw order: posterior noise, diffusion noise, timestep index, w, dropout mask.
        post = torch.randn(mean.shape, generator=generator).to(dev)
        noise = torch.randn(mean.shape, generator=generator).to(dev)
        high = NUM_TRAIN_TIMESTEPS if o.stage == "guidance" else o.steps
        i = torch.randint(0, high, (b,), generator=generator)
        w = (o.w_min + (o.w_max - o.w_min) * torch.rand(b, generator=generator)).to(dev)
        drop = (torch.rand(b, generator=generator) < self.caption_dropout).to(dev)

        z = (mean + std * post) * self.scaling_factor
        null = self.null_embedding.to(device=dev, dtype=emb.dtype).expand_as(emb)
        cond = torch.where(drop[:, None, None], null, emb)
        w_emb = guidance_scale_embedding(w - 1.0, o.guidance_dim, emb.dtype)
        abar = self.alphas_cumprod
        if o.stage == "guidance":
            t = i.to(dev)
        else:
            grid = torch.tensor(explicit_grid(o.steps)[::-1], device=dev)  # ascending
            t = grid[i]
        x_t = self.scheduler.add_noise(z, noise, t)

        pred = model(x_t, t, encoder_hidden_states=cond, timestep_cond=w_emb).sample
        x_hat, _ = x0_and_eps(pred, x_t, t, abar, self.prediction_type)
        with torch.no_grad():
            if o.stage == "guidance":
                tp = self._teacher(x_t, t, cond, null, w, w_emb)
                target, _ = x0_and_eps(tp, x_t, t, abar, self.prediction_type)
            else:
                target = self._two_teacher_steps(x_t, i, cond, null, w, w_emb)
        snr = abar[t] / (1 - abar[t])
        per_row = (x_hat.float() - target.float()).square().flatten(1).mean(1)
        return (snr.clamp(min=1.0) * per_row).mean()

    def _teacher(self, x, t, cond, null, w, w_emb) -> torch.Tensor:
        """The teacher's prediction at ``(x, t)`` and guidance ``w``: one forward with the
        embedding when it takes one, else CFG ``u + w (c - u)`` on the doubled batch."""
        if getattr(self.teacher.config, "time_cond_proj_dim", None):
            return self.teacher(x, t, encoder_hidden_states=cond, timestep_cond=w_emb).sample
        both = self.teacher(
            torch.cat([x, x]), torch.cat([t, t]), encoder_hidden_states=torch.cat([null, cond])
        ).sample
        u, c = both.chunk(2)
        return u + _bcast(w, u).to(u.dtype) * (c - u)

    def _two_teacher_steps(self, x_t, i, cond, null, w, w_emb) -> torch.Tensor:
        """Salimans & Ho's target for student grid index ``i`` (see :func:`progressive_target`)."""
        dev, n = x_t.device, self.opts.steps
        fine = explicit_grid(2 * n)[::-1]  # ascending: fine[2k + 1] = student grid point k
        idx = i.tolist()
        t = torch.tensor([fine[2 * k + 1] for k in idx], device=dev)
        t_mid = torch.tensor([fine[2 * k] for k in idx], device=dev)
        abar = torch.cat([self.alphas_cumprod, self.alphas_cumprod.new_ones(1)])
        t_end = torch.tensor([fine[2 * k - 1] if k > 0 else -1 for k in idx], device=dev)
        a_t, a_mid, a_end = (_bcast(abar[v], x_t) for v in (t, t_mid, t_end))  # abar[-1] = 1
        p1 = self._teacher(x_t, t, cond, null, w, w_emb)
        z1, _ = ddim_move(p1, x_t, a_t, a_mid, self.prediction_type)
        p2 = self._teacher(z1, t_mid, cond, null, w, w_emb)
        z2, _ = ddim_move(p2, z1, a_mid, a_end, self.prediction_type)
        return progressive_target(x_t, z2, a_t, a_end)

    def export_hints(self) -> ExportHints:
        return ExportHints(
            scheduler=make_noise_scheduler(self.prediction_type),
            sampler_hint=sampler_hint(self.opts),
            task="distilled",
        )


def sampler_hint(opts: GuidedOptions) -> dict[str, Any]:
    """``ldmscale_model.json``'s ``sampler_hint`` of a guided/progressive stage's model."""
    return {
        "name": "ddim_grid",
        "steps": opts.steps,
        "timestep_grid": explicit_grid(opts.steps),
        "stage": opts.stage,
        "guidance": {
            "mode": "embedded",
            "dim": opts.guidance_dim,
            "w_range": [opts.w_min, opts.w_max],
            "convention": "timestep_cond = guidance_scale_embedding(w - 1, dim); one UNet "
            "forward per step",
        },
    }


def build(cfg: TrainConfig) -> Guided:
    """The guided-distillation objective of ``cfg`` (``objective_options``:
    :class:`GuidedOptions`; ``init_from`` and ``teacher`` required)."""
    opts = read_options(GuidedOptions, cfg)
    try:
        opts.check()
    except ConfigError as e:
        raise ConfigError(f"TrainConfig.{e}") from None
    if not cfg.init_from:
        raise ConfigError(
            "objective 'guided' starts the student from its teacher: set TrainConfig.init_from "
            "to the teacher's model folder (`ldmscale distill --method guided` sets it)"
        )
    if cfg.min_snr_gamma:
        raise ConfigError(
            f"TrainConfig.min_snr_gamma={cfg.min_snr_gamma}: objective 'guided' weights by "
            "max(SNR, 1); set it to 0"
        )
    return Guided(
        opts=opts,
        scheduler=make_noise_scheduler(cfg.prediction_type),
        prediction_type=cfg.prediction_type,
        caption_dropout=float(cfg.caption_dropout),
    )


def guided_stage_configs(
    base: TrainConfig, teacher: str, chain: list[int], stage_train_steps: list[int] | None = None
) -> list[TrainConfig]:
    """The run configs of a guided-distillation chain, e.g. ``chain = [32, 16, 8, 4]``: stage
    one (``stage = "guidance"``, sampled in ``chain[0]`` steps) from the text-to-image
    ``teacher``, then one progressive stage per halving, each starting from and taught by the
    previous stage's model. Run folders: ``<base.run_dir>-g<chain[0]>``, then
    ``<base.run_dir>-pd<N>``. ``base.objective_options`` gives ``w_min``, ``w_max``,
    ``guidance_dim``; ``stage_train_steps`` (default ``base.steps`` each) the training steps."""
    if not chain or any(2 * b != a for a, b in zip(chain, chain[1:])):
        raise ConfigError(f"guided chain {chain}: give step counts that halve, e.g. 32,16,8,4")
    steps = stage_train_steps or [base.steps] * len(chain)
    if len(steps) != len(chain):
        raise ConfigError(f"{len(steps)} training step counts for a chain of {len(chain)} stages")
    shared = {k: v for k, v in base.objective_options.items() if k not in ("stage", "steps")}
    out: list[TrainConfig] = []
    parent = str(teacher)
    for j, n in enumerate(chain):
        stage = "guidance" if j == 0 else "progressive"
        run_dir = f"{base.run_dir}-{'g' if j == 0 else 'pd'}{n}"
        cfg = base.replace(
            objective="guided",
            objective_options={**shared, "stage": stage, "steps": n},
            init_from=parent,
            teacher=parent,
            run_dir=run_dir,
            steps=steps[j],
        )
        out.append(cfg)
        parent = str(cfg.run_dir) + "/model"
    return out
