"""Consistency distillation (``objective = "consistency"``): LCM's and CoDi's as settings of one
objective.

A student ``f(x, t, w)`` learns to map every point of a probability-flow ODE trajectory to the
trajectory's start (the clean latent), in a few steps at sampling time. Per training step:

1. a clean latent ``z`` (a sample of the VAE posterior, as :mod:`~ldmscale.objectives.t2i`), a
   grid index ``n ~ U{0 .. N-1}`` of the fixed grid ``t_n = (n + 1) k - 1`` (``N =
   num_ddim_timesteps``, ``k = 1000 // N``, LCM's grid), ``t = t_n``, ``s = max(t - k, 0)``;
   ``x_t = sqrt(abar_t) z + sqrt(1 - abar_t) eps``;
2. the **student** (the model being trained) at ``(x_t, t)``, boundary-combined:
   ``f = c_skip(t) x_t + c_out(t) x0(pred)`` with ``c_skip = sd^2 / ((a t)^2 + sd^2)``,
   ``c_out = a t / sqrt((a t)^2 + sd^2)``, ``sd = 0.5``, ``a = timestep_scaling`` (10), so
   ``f(x, 0) = x`` exactly (:func:`consistency_output`; diffusers' ``LCMScheduler`` uses the
   same scalings at sampling time);
3. one **DDIM step** (eta = 0) from ``t`` to ``s`` by the solver network (no gradient):
   ``x_s = sqrt(abar_s) x0 + sqrt(1 - abar_s) eps`` from its prediction
   (:func:`ddim_solver_step`; equal to ``DDIMScheduler.step`` between the same timesteps). The
   solver is the frozen ``teacher`` (LCM) or the ``target`` network itself (CoDi's one-step
   ODE by the EMA of the model being trained); with guidance ``w != 1`` the solver's
   prediction is ``u + w (c - u)`` (ldmscale's convention, one forward of the doubled batch);
4. the **target** network (an EMA of the student, no gradient) at ``(x_s, s)``,
   boundary-combined; the loss is ``d(f_student, f_target)``: ``"l2"`` (mean squared error) or
   ``"huber"`` (pseudo-Huber ``sqrt(d^2 + c^2) - c``, mean over elements), plus
   ``data_term * mean((f_student - z)^2)`` (CoDi's data term; 0 for LCM).

**Guidance.** ``guidance_embedding = True`` (LCM): ``w ~ U[w_min, w_max]`` per row; the
student and the target get ``timestep_cond = guidance_scale_embedding(w - 1, dim)`` (the UNet
override ``time_cond_proj_dim = dim``, a projection grown from the teacher at zero by
:mod:`ldmscale.surgery`, so the student starts as the teacher); sampled with one forward per
step (ldmscale ``w`` = 1 + LCM's ``w``). ``False``: the student gets no ``w``; with ``w_min =
w_max = 1`` (CoDi) it learns the unguided ODE and is sampled with ordinary CFG on the doubled
batch (caption dropout, ``TrainConfig.caption_dropout``, teaches it the unconditional branch);
a fixed ``w_min = w_max != 1`` bakes that guidance in (sample at ``w = 1``).

**Styles.** ``style`` fills every switch left unset (:data:`STYLES`): ``"lcm"`` = Luo et al.
2023 as diffusers' ``train_lcm_distill_sd_wds.py`` has it (teacher solver with CFG, w-embedding,
pseudo-Huber, target decay 0.95, no data term); ``"codi"`` = Mei et al. 2024's conditional
consistency distillation, the paper's "CoDi" (target-network solver, no guidance in the ODE
step, no w-embedding, L2 on x plus the data term, decay 0.999). The paper trains a ControlNet
adapter on a frozen UNet; here the whole UNet is the student (docs/distill.md says why).

The student must start from the teacher (``TrainConfig.init_from``); the teacher solver needs
``TrainConfig.teacher`` (``ldmscale distill`` sets both). The target's weights and update
count are the objective's state (in every checkpoint, so a resume is exact). The exported
model (the trainer's EMA of the student, ``TrainConfig.ema_decay``) gets ``task =
"distilled"``, an ``LCMScheduler`` config with the training grid (``original_inference_steps =
N``, ``timestep_scaling``) as its ``scheduler/``, and a ``sampler_hint``.
"""

from __future__ import annotations

import copy
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

if TYPE_CHECKING:
    from ldmscale.train.config import TrainConfig

#: sigma_data of the boundary scalings (fixed at 0.5 in diffusers' LCMScheduler).
SIGMA_DATA = 0.5
SOLVERS = ("teacher", "target")
LOSSES = ("l2", "huber")
#: style -> the value of every switch it sets (the options' None fields).
STYLES: dict[str, dict[str, Any]] = {
    "lcm": dict(
        solver="teacher",
        guidance_embedding=True,
        w_min=6.0,  # LCM's w in [5, 15], in ldmscale's convention (w = 1 + LCM's w)
        w_max=16.0,
        loss="huber",
        data_term=0.0,
        target_decay=0.95,
    ),
    "codi": dict(
        solver="target",
        guidance_embedding=False,
        w_min=1.0,
        w_max=1.0,
        loss="l2",
        data_term=1.0,
        target_decay=0.999,
    ),
}


@dataclass
class ConsistencyOptions(Config):
    """``TrainConfig.objective_options`` of ``objective = "consistency"``.

    style: "lcm" | "codi": the values of the switches left unset (None), see :data:`STYLES`.
    solver: "teacher" (the frozen teacher takes the ODE step) | "target" (the target EMA does).
    guidance_embedding: give the student ``w`` as ``timestep_cond`` (LCM) or not (CoDi).
    w_min, w_max: the solver's guidance scale, ``u + w (c - u)``, drawn ``U[w_min, w_max]``
        per row (ldmscale's convention: 1 = none).
    loss: "l2" | "huber" (pseudo-Huber with ``huber_c``).
    data_term: weight of ``mean((f_student - z)^2)`` (CoDi's; 0 = off).
    target_decay: EMA decay of the target network (no warm-up).
    num_ddim_timesteps: N, the grid size; the skipping step is ``k = 1000 // N`` (must divide
        1000). guidance_dim: width of the guidance embedding (``time_cond_proj_dim``).
    timestep_scaling: ``a`` of the boundary scalings (``LCMScheduler.timestep_scaling``).
    sampler_steps: the steps the exported ``sampler_hint`` suggests.
    """

    style: str = "lcm"
    solver: str | None = None
    guidance_embedding: bool | None = None
    w_min: float | None = None
    w_max: float | None = None
    loss: str | None = None
    data_term: float | None = None
    target_decay: float | None = None
    huber_c: float = 0.001
    num_ddim_timesteps: int = 50
    guidance_dim: int = 256
    timestep_scaling: float = 10.0
    sampler_steps: int = 4

    def resolved(self) -> ConsistencyOptions:
        """A copy with every unset switch filled in from :data:`STYLES`, checked."""
        if self.style not in STYLES:
            raise ConfigError(
                f"objective_options of 'consistency': style {self.style!r} is not one of "
                f"{sorted(STYLES)}"
            )
        filled = {k: v for k, v in STYLES[self.style].items() if getattr(self, k) is None}
        out = self.replace(**filled)
        out.check()
        return out

    def check(self) -> None:
        def bad(why: str) -> ConfigError:
            return ConfigError(f"objective_options of 'consistency': {why}")

        if self.solver not in SOLVERS:
            raise bad(f"solver={self.solver!r} must be one of {list(SOLVERS)}")
        if self.loss not in LOSSES:
            raise bad(f"loss={self.loss!r} must be one of {list(LOSSES)}")
        if not self.w_min <= self.w_max:
            raise bad(f"w_min={self.w_min} must be <= w_max={self.w_max}")
        if not self.guidance_embedding and self.w_min != self.w_max:
            raise bad(
                f"w is drawn from [{self.w_min}, {self.w_max}] but the student is not told w: "
                "set guidance_embedding = true, or a fixed w (w_min = w_max; 1 = none)"
            )
        if self.solver == "target" and (self.w_min, self.w_max) != (1.0, 1.0):
            raise bad(
                "the target solver takes the ODE step without guidance (CoDi: guidance in the "
                "self-solved step makes it diverge); set w_min = w_max = 1 or solver = 'teacher'"
            )
        n = self.num_ddim_timesteps
        if n < 1 or NUM_TRAIN_TIMESTEPS % n:
            raise bad(f"num_ddim_timesteps={n} must divide {NUM_TRAIN_TIMESTEPS} (e.g. 50)")
        if not 0.0 <= self.target_decay < 1.0:
            raise bad(f"target_decay={self.target_decay} must be in [0, 1)")
        if self.data_term < 0 or self.huber_c <= 0 or self.timestep_scaling <= 0:
            raise bad("data_term must be >= 0, huber_c and timestep_scaling > 0")
        if self.guidance_embedding and self.guidance_dim < 2:
            raise bad(f"guidance_dim={self.guidance_dim} must be >= 2")
        if not 1 <= self.sampler_steps <= n:
            raise bad(f"sampler_steps={self.sampler_steps} must be in [1, {n}]")

    @property
    def skip(self) -> int:
        """The skipping step ``k`` between grid points."""
        return NUM_TRAIN_TIMESTEPS // self.num_ddim_timesteps

    def grid(self) -> torch.Tensor:
        """The start timesteps ``(n + 1) k - 1``, n = 0 .. N-1 (LCMScheduler's training grid)."""
        return torch.arange(1, self.num_ddim_timesteps + 1) * self.skip - 1


# ----------------------------------------------------------------------------- the maths


def boundary_scalings(
    t: torch.Tensor, timestep_scaling: float = 10.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(c_skip, c_out)`` float32 at integer timesteps ``t``: ``c_skip = sd^2 / ((a t)^2 +
    sd^2)``, ``c_out = a t / sqrt((a t)^2 + sd^2)`` (sd = 0.5); ``(1, 0)`` at ``t = 0``."""
    scaled = t.float() * timestep_scaling
    c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
    c_out = scaled / (scaled**2 + SIGMA_DATA**2) ** 0.5
    return c_skip, c_out


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.to(like.device).reshape(-1, *([1] * (like.ndim - 1)))


def x0_and_eps(
    pred: torch.Tensor,
    x: torch.Tensor,
    t: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction_type: str = "epsilon",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The clean latent and the noise a UNet ``pred`` (epsilon or v) at timesteps ``t`` implies
    for ``x = sqrt(abar) x0 + sqrt(1 - abar) eps`` (DDIM's conversions)."""
    abar = _bcast(alphas_cumprod.to(x.device)[t], x)
    a, b = abar**0.5, (1 - abar) ** 0.5
    if prediction_type == "epsilon":
        return (x - b * pred) / a, pred
    if prediction_type == "v_prediction":
        return a * x - b * pred, a * pred + b * x
    raise ConfigError(f"prediction_type {prediction_type!r}: use 'epsilon' or 'v_prediction'")


def consistency_output(
    pred: torch.Tensor,
    x: torch.Tensor,
    t: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction_type: str = "epsilon",
    timestep_scaling: float = 10.0,
) -> torch.Tensor:
    """``f(x, t) = c_skip(t) x + c_out(t) x0(pred)``: a UNet prediction made a consistency
    function with the boundary condition ``f(x, 0) = x`` (``LCMScheduler.step``'s
    ``denoised``)."""
    x0, _ = x0_and_eps(pred, x, t, alphas_cumprod, prediction_type)
    c_skip, c_out = boundary_scalings(t, timestep_scaling)
    return _bcast(c_skip, x) * x + _bcast(c_out, x) * x0


def ddim_solver_step(
    pred: torch.Tensor,
    x: torch.Tensor,
    t: torch.Tensor,
    s: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction_type: str = "epsilon",
) -> torch.Tensor:
    """One deterministic DDIM step (eta = 0) from timesteps ``t`` to ``s`` (per row, ``s >= 0``):
    ``sqrt(abar_s) x0 + sqrt(1 - abar_s) eps`` from the prediction ``pred`` at ``(x, t)``."""
    x0, eps = x0_and_eps(pred, x, t, alphas_cumprod, prediction_type)
    abar_s = _bcast(alphas_cumprod.to(x.device)[s], x)
    return abar_s**0.5 * x0 + (1 - abar_s) ** 0.5 * eps


def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float) -> torch.Tensor:
    """Mean of ``sqrt((a - b)^2 + c^2) - c`` over all elements (float32)."""
    d = a.float() - b.float()
    return (torch.sqrt(d * d + c * c) - c).mean()


# ----------------------------------------------------------------------------- the objective


@dataclass
class Consistency(Objective):
    """Consistency distillation (see the module docstring); ``opts`` resolved."""

    opts: ConsistencyOptions
    scheduler: Any
    prediction_type: str = "epsilon"
    caption_dropout: float = 0.0
    name: str = "consistency"
    required_keys: tuple[str, ...] = ("latent_mean", "latent_std", "embeddings")

    def __post_init__(self) -> None:
        self.uses_teacher = self.opts.solver == "teacher"
        self.alphas_cumprod = self.scheduler.alphas_cumprod.float()
        self.teacher: torch.nn.Module | None = None
        self.target: torch.nn.Module | None = None
        self.null_embedding: torch.Tensor | None = None
        self.scaling_factor: float | None = None
        self.updates = 0

    @property
    def solver_forwards_per_step(self) -> int:
        """UNet forwards (batch rows) per row and step besides the student's: the solver's (2
        with CFG's doubled batch, else 1) and the target's (1)."""
        return (1 if (self.opts.w_min, self.opts.w_max) == (1.0, 1.0) else 2) + 1

    @property
    def extra_forwards_per_step(self) -> float:
        return float(self.solver_forwards_per_step)

    def unet_overrides(self) -> dict[str, int]:
        return (
            {"time_cond_proj_dim": self.opts.guidance_dim} if self.opts.guidance_embedding else {}
        )

    def setup(self, ctx: SetupContext) -> None:
        self.null_embedding = ctx.cond.null_embedding
        self.scaling_factor = float(ctx.cond.scaling_factor)
        self.alphas_cumprod = self.alphas_cumprod.to(ctx.device)
        _check_prediction_type(ctx.cfg.teacher or ctx.cfg.init_from, self.prediction_type)
        if self.uses_teacher:
            self.teacher = load_teacher(ctx.cfg.teacher, ctx.device)
        self.target = copy.deepcopy(ctx.model).eval().requires_grad_(False)
        self.updates = 0

    def loss(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> torch.Tensor:
        if self.target is None or self.null_embedding is None or self.scaling_factor is None:
            raise RuntimeError("Consistency needs setup() before loss()")
        o = self.opts
        mean, std, emb = batch["latent_mean"], batch["latent_std"], batch["embeddings"]
        dev, b = mean.device, mean.shape[0]
        # Fixed draw order: posterior noise, diffusion noise, grid index, w, dropout mask.
        post = torch.randn(mean.shape, generator=generator).to(dev)
        noise = torch.randn(mean.shape, generator=generator).to(dev)
        n = torch.randint(0, o.num_ddim_timesteps, (b,), generator=generator)
        w = o.w_min + (o.w_max - o.w_min) * torch.rand(b, generator=generator)
        drop = (torch.rand(b, generator=generator) < self.caption_dropout).to(dev)

        t = o.grid()[n].to(dev)
        s = (t - o.skip).clamp(min=0)
        w = w.to(dev)
        z = (mean + std * post) * self.scaling_factor
        null = self.null_embedding.to(device=dev, dtype=emb.dtype).expand_as(emb)
        cond = torch.where(drop[:, None, None], null, emb)
        w_emb = (
            guidance_scale_embedding(w - 1.0, o.guidance_dim, emb.dtype)
            if o.guidance_embedding
            else None
        )
        x_t = self.scheduler.add_noise(z, noise, t)

        student = self._f(model, x_t, t, cond, w_emb)
        with torch.no_grad():
            x_s = self._solve(x_t, t, s, cond, null, w, w_emb)
            target = self._f(self.target, x_s, s, cond, w_emb)
        if o.loss == "l2":
            loss = (student.float() - target.float()).square().mean()
        else:
            loss = pseudo_huber(student, target, o.huber_c)
        if o.data_term:
            loss = loss + o.data_term * (student.float() - z.float()).square().mean()
        return loss

    def _f(self, net, x, t, ctx, w_emb) -> torch.Tensor:
        """``net``'s consistency output at ``(x, t)``."""
        pred = net(x, t, encoder_hidden_states=ctx, timestep_cond=w_emb).sample
        return consistency_output(
            pred, x, t, self.alphas_cumprod, self.prediction_type, self.opts.timestep_scaling
        )

    def _solve(self, x_t, t, s, cond, null, w, w_emb) -> torch.Tensor:
        """The solver's DDIM step ``t -> s``, with CFG ``u + w (c - u)`` when ``w != 1``."""
        if self.opts.solver == "target":
            pred = self.target(x_t, t, encoder_hidden_states=cond, timestep_cond=w_emb).sample
        elif (self.opts.w_min, self.opts.w_max) == (1.0, 1.0):
            pred = self.teacher(x_t, t, encoder_hidden_states=cond).sample
        else:
            both = self.teacher(
                torch.cat([x_t, x_t]),
                torch.cat([t, t]),
                encoder_hidden_states=torch.cat([null, cond]),
            ).sample
            u, c = both.chunk(2)
            pred = u + _bcast(w, u).to(u.dtype) * (c - u)
        return ddim_solver_step(pred, x_t, t, s, self.alphas_cumprod, self.prediction_type)

    @torch.no_grad()
    def after_step(self, model: torch.nn.Module) -> None:
        dst = list(self.target.parameters())
        src = [p.detach().to(q.dtype) for p, q in zip(model.parameters(), dst)]
        torch._foreach_lerp_(dst, src, 1.0 - self.opts.target_decay)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"target": self.target.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.target.load_state_dict(state["target"])
        self.updates = int(state["updates"])

    def export_hints(self) -> ExportHints:
        return ExportHints(
            scheduler=lcm_scheduler(self.scheduler.config, self.opts),
            sampler_hint=sampler_hint(self.opts),
            task="distilled",
        )


def _check_prediction_type(model_dir: str | None, prediction_type: str) -> None:
    """Refuse a teacher whose ``ldmscale_model.json`` records another prediction type (the
    solver converts its output with ``prediction_type``); a folder that is gone (a resume) or
    is not an ldmscale folder is not checked."""
    from ldmscale.modelfolder import MODEL_FILE, read_model_meta
    from ldmscale.surgery import model_unet_dir

    try:
        folder = model_unet_dir(model_dir).parent if model_dir else None
    except ValueError:
        return
    if folder is None or not (folder / MODEL_FILE).is_file():
        return
    have = read_model_meta(folder).prediction_type
    if have != prediction_type:
        raise ConfigError(
            f"the teacher {folder} predicts {have!r} but TrainConfig.prediction_type is "
            f"{prediction_type!r}; set prediction_type = {have!r}"
        )


def lcm_scheduler(noise_config: Any, opts: ConsistencyOptions):
    """The ``LCMScheduler`` of a distilled model: the training noise schedule, the grid size as
    ``original_inference_steps`` and the boundary's ``timestep_scaling``."""
    from diffusers import LCMScheduler

    return LCMScheduler.from_config(
        noise_config,
        original_inference_steps=opts.num_ddim_timesteps,
        timestep_scaling=opts.timestep_scaling,
    )


def sampler_hint(opts: ConsistencyOptions) -> dict[str, Any]:
    """``ldmscale_model.json``'s ``sampler_hint`` for a consistency-distilled model."""
    if opts.guidance_embedding:
        guidance: dict[str, Any] = {
            "mode": "embedded",
            "dim": opts.guidance_dim,
            "w_range": [opts.w_min, opts.w_max],
            "convention": "timestep_cond = guidance_scale_embedding(w - 1, dim): ldmscale "
            "w = 1 + LCM's w; one UNet forward per step",
        }
    elif opts.w_min == 1.0:
        guidance = {"mode": "cfg", "convention": "ordinary CFG u + w (c - u), doubled batch"}
    else:
        guidance = {"mode": "distilled", "w": opts.w_min, "convention": "sample at w = 1"}
    return {
        "name": "lcm",
        "steps": opts.sampler_steps,
        "original_inference_steps": opts.num_ddim_timesteps,
        "timestep_scaling": opts.timestep_scaling,
        "guidance": guidance,
        "style": opts.style,
    }


def build(cfg: TrainConfig) -> Consistency:
    """The consistency objective of ``cfg`` (``objective_options``: :class:`ConsistencyOptions`;
    top-level ``prediction_type`` = the teacher's, ``caption_dropout``)."""
    opts = read_options(ConsistencyOptions, cfg)
    try:
        opts = opts.resolved()
    except ConfigError as e:
        raise ConfigError(f"TrainConfig.{e}") from None
    if not cfg.init_from:
        raise ConfigError(
            "objective 'consistency' starts the student from the teacher: set "
            "TrainConfig.init_from to the teacher's model folder (`ldmscale distill --teacher` "
            "sets it)"
        )
    if cfg.min_snr_gamma:
        raise ConfigError(
            f"TrainConfig.min_snr_gamma={cfg.min_snr_gamma}: objective 'consistency' has no "
            "min-SNR weighting; set it to 0"
        )
    return Consistency(
        opts=opts,
        scheduler=make_noise_scheduler(cfg.prediction_type),
        prediction_type=cfg.prediction_type,
        caption_dropout=float(cfg.caption_dropout),
    )
