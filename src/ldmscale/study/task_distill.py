"""The study task ``distill`` (the paper's Sec. 3.6, Fig. 13 and 19): distil every width.

Per width ``c`` of the study (or ``widths`` of the options), from its trained model
``runs/c<c>/model``:

* a **consistency-distilled** student (``objective = "consistency"``, by default the paper's
  CoDi style: the target network takes the ODE step, a data term, no guidance embedding,
  sampled with ordinary CFG) in ``distill/c<c>/cd/``;
* a **guided-distillation chain** (``objective = "guided"``): stage one (a guidance-
  conditioned student, sampled in ``guided_chain[0]`` steps) and a progressive stage per
  halving, in ``distill/c<c>/guided-g<N>/``, ``guided-pd<N>/`` (one run folder per stage, each
  taught by the previous; :func:`~ldmscale.objectives.guided.guided_stage_configs`).

Stages: ``distill`` (one unit per width: its runs; resumable, each run skipped once exported)
and ``distill-sweep``: the distilled models are ordinary models of the study's sweep, stored in
the same ``results.sqlite`` on the same prompts and seeds as the text-to-image grid (so every
comparison is paired): the consistency student with ``lcm`` at ``lcm_steps`` and ``ddim`` at 4
steps, each guided stage with ``ddim_grid`` at its own step count, all at the sweep's guidance
grid and first timestep spacing. The report's sections are :mod:`ldmscale.report.distill`.
The task needs the text-to-image widths and their sweep (the undistilled frontier).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from ldmscale.config import Config, ConfigError
from ldmscale.study.config import StudyConfig
from ldmscale.study.context import StudyRun
from ldmscale.study.stages import Stage, _stored, train_inputs
from ldmscale.study.tasks import Task


@dataclass
class DistillOptions(Config):
    """``StudyConfig.task_options["distill"]``.

    widths: the widths to distil (empty: every width of the study).
    consistency_style: ``"codi"`` (the paper's) or ``"lcm"``; consistency_steps: its training
        steps; consistency_options: further ``ConsistencyOptions`` of its objective (e.g.
        ``num_ddim_timesteps``, ``target_decay``; the style fills the rest).
    guided_chain: the sampling steps of each guided stage, halving (stage one's first);
        guided_steps: each stage's training steps. w_min, w_max: the guided stages'
        guidance range. batch_size, lr, warmup_steps, ema_decay: every distillation run's.
    lcm_steps: the ``lcm`` step counts the consistency student is swept at.
    """

    widths: tuple[int, ...] = ()
    consistency_style: str = "codi"
    consistency_steps: int = 1000
    consistency_options: dict[str, Any] = field(default_factory=dict)
    guided_chain: tuple[int, ...] = (32, 16, 8, 4)
    guided_steps: tuple[int, ...] = (1000, 500, 500, 500)
    w_min: float = 1.0
    w_max: float = 5.0
    batch_size: int = 128
    lr: float = 2e-4
    warmup_steps: int = 10
    ema_decay: float = 0.99
    lcm_steps: tuple[int, ...] = (1, 2, 4, 8)

    def check(self, cfg: StudyConfig) -> None:
        def bad(why: str) -> ConfigError:
            return ConfigError(f"task_options.distill: {why}")

        missing = sorted(set(self.widths) - set(cfg.widths))
        if missing:
            raise bad(f"widths {missing} are not widths of the study {list(cfg.widths)}")
        if len(self.guided_steps) != len(self.guided_chain):
            raise bad(
                f"guided_steps {list(self.guided_steps)} needs one training step count per "
                f"stage of guided_chain {list(self.guided_chain)}"
            )
        if self.consistency_style not in ("codi", "lcm"):
            raise bad(f"consistency_style {self.consistency_style!r} must be 'codi' or 'lcm'")
        if not self.lcm_steps or min(self.lcm_steps) < 1:
            raise bad(f"lcm_steps {list(self.lcm_steps)} must be step counts >= 1")
        if "style" in self.consistency_options:
            raise bad("consistency_options: give the style as consistency_style")
        try:
            self.consistency()
        except ConfigError as e:
            raise bad(f"consistency_options: {e}") from e

    def consistency_objective(self) -> dict[str, Any]:
        """The consistency run's ``objective_options``: the style and the further options."""
        return {"style": self.consistency_style, **self.consistency_options}

    def consistency(self) -> Any:
        """The consistency run's resolved ``ConsistencyOptions`` (every switch filled in)."""
        from ldmscale.objectives.consistency import ConsistencyOptions

        return ConsistencyOptions.from_dict(self.consistency_objective()).resolved()


def options(cfg: StudyConfig) -> DistillOptions:
    """The task's checked options in ``cfg``."""
    from ldmscale.study.tasks import get_task

    opts = DistillOptions.from_dict(get_task("distill").options(cfg))
    opts.check(cfg)
    return opts


def widths(cfg: StudyConfig) -> tuple[int, ...]:
    return options(cfg).widths or tuple(cfg.widths)


def distill_dir(cfg: StudyConfig, c: int) -> Path:
    """``<study>/distill/c<c>/``: width ``c``'s distillation runs."""
    return cfg.root / "distill" / f"c{c}"


def run_configs(cfg: StudyConfig, c: int) -> dict[str, Any]:
    """Width ``c``'s distillation runs, kind -> ``TrainConfig``: ``"cd"`` (consistency) and
    one per guided stage (``"guided-g16"``, ``"guided-pd8"``, ...)."""
    from ldmscale.objectives.guided import guided_stage_configs

    o = options(cfg)
    teacher = str(cfg.run_dir(c) / "model")
    base = cfg.train_config(c).replace(
        batch_size=o.batch_size,
        lr=o.lr,
        warmup_steps=o.warmup_steps,
        ema_decay=o.ema_decay,
        min_snr_gamma=0.0,
        eval_steps=(),
        checkpoint_every=max(o.consistency_steps, *o.guided_steps),
        log_every=10,
    )
    cd_opts = o.consistency_objective()
    solver = o.consistency().solver
    out: dict[str, Any] = {
        "cd": base.replace(
            run_dir=str(distill_dir(cfg, c) / "cd"),
            steps=o.consistency_steps,
            objective="consistency",
            objective_options=cd_opts,
            init_from=teacher,
            teacher=teacher if solver == "teacher" else None,
        )
    }
    guided = base.replace(
        run_dir=str(distill_dir(cfg, c) / "guided"),
        objective_options={"w_min": o.w_min, "w_max": o.w_max},
    )
    for stage in guided_stage_configs(guided, teacher, list(o.guided_chain), list(o.guided_steps)):
        out[Path(stage.run_dir).name] = stage
    return out


def kind_of(model_path: str) -> str:
    """The distillation kind of a model folder under ``distill/c<c>/`` (``"cd"``,
    ``"guided-pd4"``, ...); ``"teacher"`` for any other folder."""
    p = Path(model_path)
    if p.name == "model" and p.parent.parent.parent.name == "distill":
        return p.parent.name
    return "teacher"


#: Options that change what is sampled, not what is trained (not ``distill`` stage inputs).
_SWEEP_ONLY = ("widths", "lcm_steps")


def _inputs(cfg: StudyConfig, c: int) -> dict[str, Any]:
    """Width ``c``'s ``distill`` stage inputs: its teacher's and the training options."""
    train = {k: v for k, v in options(cfg).to_dict().items() if k not in _SWEEP_ONLY}
    return {"teacher": train_inputs(cfg, c), "distill": train}


def _done(c: int, run: StudyRun) -> bool:
    from ldmscale.modelfolder import MODEL_FILE

    return all(
        (Path(k.run_dir) / "model" / MODEL_FILE).is_file() for k in run_configs(run.cfg, c).values()
    )


def _run(c: int, run: StudyRun) -> None:
    from ldmscale.modelfolder import MODEL_FILE
    from ldmscale.train import train

    for kind, k in run_configs(run.cfg, c).items():
        if (Path(k.run_dir) / "model" / MODEL_FILE).is_file():
            continue
        run.log(f"[study]   distilling c={c}: {kind}, {k.steps} steps")
        train(k, progress=run.progress)


def sweep_settings(cfg: StudyConfig) -> list[tuple[str, str, int, float, str]]:
    """The distilled models' cells: ``(model, sampler, steps, w, spacing)``."""
    o = options(cfg)
    spacing = cfg.sweep.timestep_spacings[0]
    out = []
    for c in widths(cfg):
        for kind, k in run_configs(cfg, c).items():
            model = str(Path(k.run_dir) / "model")
            if kind == "cd":
                plan = [("lcm", s) for s in o.lcm_steps] + [("ddim", 4)]
            else:
                plan = [("ddim_grid", int(k.objective_options["steps"]))]
            out += [(model, s, n, float(w), spacing) for s, n in plan for w in cfg.sweep.guidance]
    return out


def distill_plan(run: StudyRun):
    """The ``distill-sweep`` stage's plan (built once per run)."""
    from ldmscale.sweep import plan_cells

    return run._cached("distill", lambda: plan_cells(run.sweep_cfg, sweep_settings(run.cfg)))


def _sweep_inputs(cfg: StudyConfig) -> dict[str, Any]:
    from ldmscale.study.stages import sweep_inputs

    return {
        "distill": {f"c{c}": _inputs(cfg, c) for c in widths(cfg)},
        "lcm_steps": list(options(cfg).lcm_steps),
        **sweep_inputs(cfg),
    }


def _sweep_run(run: StudyRun) -> None:
    from ldmscale.sweep import run_sweep

    plan = distill_plan(run)
    run.log(f"[study]   distilled models: {len(plan.cells)} cells -> {run.sweep_cfg.store}")
    run_sweep(run.sweep_cfg, progress=run.progress, plan=plan)


def stages(cfg: StudyConfig) -> list[Stage]:
    """One ``distill`` unit per width, then ``distill-sweep``."""
    return [
        *(
            Stage(
                "distill",
                partial(_inputs, c=c),
                partial(_done, c),
                partial(_run, c),
                unit=f"c{c}",
                outputs=partial(distill_dir, c=c),
            )
            for c in widths(cfg)
        ),
        Stage(
            "distill-sweep",
            _sweep_inputs,
            lambda run: _stored(run, distill_plan(run)),
            _sweep_run,
        ),
    ]


def dry_run(cfg: StudyConfig) -> list[str]:
    """The task's plan for ``ldmscale study --dry-run``: runs, training forwards, cells and
    per-image UNet evaluations (1 per step for the guided stages' embedding at any ``w``)."""
    from ldmscale import cost
    from ldmscale.objectives import make_noise_scheduler
    from ldmscale.objectives.consistency import Consistency
    from ldmscale.objectives.guided import GuidedOptions

    o, sw = options(cfg), cfg.sweep
    cd_opts = o.consistency()
    cd_extra = Consistency(cd_opts, make_noise_scheduler()).extra_forwards_per_step
    g_extra = GuidedOptions().teacher_forwards_per_step
    plan = [(s, cd_opts.guidance_embedding) for s in (*o.lcm_steps, 4)]
    plan += [(n, True) for n in o.guided_chain]
    evals = sum(
        cost.unet_evaluations(s, cost.evaluations_per_step(w, emb), sw.n_images)
        for s, emb in plan
        for w in sw.guidance
    )
    n = len(widths(cfg))
    return [
        f"distill: {n} widths x ({o.consistency_steps} consistency ({o.consistency_style}) + "
        f"{sum(o.guided_steps)} guided steps, chain {list(o.guided_chain)}) at batch "
        f"{o.batch_size}; train_compute x{1 + cd_extra / 3:.3g} (consistency), "
        f"x{1 + g_extra / 3:.3g} (guided) per step",
        f"distill sweep: {n * len(plan) * len(sw.guidance)} cells, {n * evals:,} per-image UNet "
        "evaluations (guided stages: 1 per step at any w; CFG counted twice otherwise)",
    ]


def _report(run: StudyRun, figures: Path) -> list[str]:
    from ldmscale.report.distill import distill_sections

    return distill_sections(run, figures)


def default_options(preset: str) -> dict[str, Any]:
    """The options of a preset: ``tiny`` is sized to run in about 25 minutes on one core (its
    three widths; its sweep has DDIM at 4, 8 and 16 steps, the guided stages' teachers);
    others take the :class:`DistillOptions` defaults.

    ``tiny``'s consistency run uses a 10-point grid (skip 100) and a target EMA of 0.95: in
    300 steps the chain from the boundary is learnt on 10 links but not on 50 (c16, 256
    images, FD-probe of the 1-step student minus the teacher's 1-step DDIM: -80 [-106, -47]
    vs -32 [-52, -9] on CoDi's 50-point grid; 4 steps a tie with either, docs/distill.md)."""
    if preset == "tiny":
        return DistillOptions(
            consistency_steps=300, guided_chain=(16, 8, 4), guided_steps=(250, 125, 125),
            batch_size=64, consistency_options={"num_ddim_timesteps": 10, "target_decay": 0.95},
        ).to_dict()  # fmt: skip
    return DistillOptions().to_dict()


TASK = Task(
    name="distill",
    summary="consistency (CoDi) and guided+progressive distillation of every width; Fig. 13, 19",
    needs=("data", "autoencoder", "train", "sweep", "confirm"),
    stages=stages,
    report=_report,
    default_options=default_options,
    dry_run=dry_run,
)
