"""Guided and progressive distillation: the explicit-grid DDIM sampler against diffusers, the
progressive target's algebra, the student's start, the chain of stage runs, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ldmscale.config import ConfigError
from ldmscale.denoisers import guidance_scale_embedding
from ldmscale.objectives import build_objective, make_noise_scheduler
from ldmscale.objectives.guided import Guided, GuidedOptions, guided_stage_configs
from ldmscale.samplers import ddim_move, explicit_grid, make_scheduler
from ldmscale.surgery import init_from
from ldmscale.train import TrainConfig, train
from test_distill import RandomEncoder, teacher  # noqa: F401  (teacher: fixture)
from test_train import C, D, H, T, caches, make_cfg  # noqa: F401  (caches: fixture)

# ----------------------------------------------------------------------------- the grid


def test_explicit_grid_nests_and_differs_from_diffusers_floor():
    assert explicit_grid(4) == [999, 749, 499, 249]
    assert explicit_grid(1) == [999]
    for n in (2, 4, 8, 16, 32, 64, 5, 25):
        assert explicit_grid(2 * n)[::2] == explicit_grid(n), n
    # 16 does not divide 1000: diffusers' DDIM steps by 1000 // 16 = 62, from 937 to 875, off
    # the grid (which goes to 874).
    g16 = explicit_grid(16)
    assert g16[:3] == [999, 937, 874] and 937 - 1000 // 16 not in g16
    with pytest.raises(ConfigError, match="grid steps"):
        explicit_grid(0)


def _toy_net(x: torch.Tensor, t) -> torch.Tensor:
    """A deterministic stand-in for a UNet: smooth in x, depends on t."""
    tt = torch.as_tensor(t, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
    return torch.tanh(0.7 * x + tt / 1000.0) - 0.3 * x.roll(1, dims=-1)


def _loop(scheduler, x: torch.Tensor, steps: int) -> torch.Tensor:
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        x = scheduler.step(_toy_net(x, t), t, x, eta=0.0, return_dict=False)[0]
    return x


@pytest.mark.parametrize("ptype", ["epsilon", "v_prediction"])
def test_ddim_grid_equals_diffusers_ddim_where_the_grids_agree(ptype):
    from diffusers import DDIMScheduler

    config = make_noise_scheduler(ptype).config
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    for n in (1, 2, 4, 5, 8, 10, 20, 50):  # divide 1000: trailing DDIM is on the grid
        ours = make_scheduler(config, "ddim_grid")
        ref = DDIMScheduler.from_config(config, timestep_spacing="trailing")
        ours.set_timesteps(n)
        ref.set_timesteps(n)
        assert ours.timesteps.tolist() == ref.timesteps.tolist() == explicit_grid(n)
        assert (_loop(ours, x, n) - _loop(ref, x, n)).abs().max() < 1e-6, n
    # Where it does not divide, diffusers' steps leave the grid and the results differ.
    ours, ref = (
        make_scheduler(config, "ddim_grid"),
        DDIMScheduler.from_config(config, timestep_spacing="trailing"),
    )
    assert (_loop(ours, x, 16) - _loop(ref, x, 16)).abs().max() > 1e-4


# ----------------------------------------------------------------------------- the target


class _FakeTeacher(torch.nn.Module):
    """A guidance-conditioned 'UNet' in float64: ``_toy_net`` shifted by the embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.config = type("Cfg", (), {"time_cond_proj_dim": 8})()

    def forward(self, x, t, encoder_hidden_states=None, timestep_cond=None):
        out = _toy_net(x, t) + 0.01 * timestep_cond[:, :1, None, None].to(x.dtype)
        return type("Out", (), {"sample": out})()


@pytest.mark.parametrize("ptype", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("n", [1, 4, 16, 32])
def test_progressive_target_algebra_float64(ptype, n):
    """One student step of the ``ddim_grid`` sampler from the target lands where the teacher's
    two DDIM steps do (to 1e-5 in float64), at every grid index including the last step."""
    sched = make_noise_scheduler(ptype)
    obj = Guided(GuidedOptions(stage="progressive", steps=n, guidance_dim=8), sched, ptype)
    obj.teacher = _FakeTeacher()
    obj.alphas_cumprod = sched.alphas_cumprod.double()
    i = torch.arange(n)
    g = torch.Generator().manual_seed(n)
    x_t = torch.randn(n, 4, 6, 6, generator=g, dtype=torch.float64)
    w = 1.0 + 5.0 * torch.rand(n, generator=g, dtype=torch.float64)
    emb = guidance_scale_embedding(w - 1, 8).double()
    target = obj._two_teacher_steps(x_t, i, None, None, w, emb)

    student = make_scheduler(sched.config, "ddim_grid")
    student.set_timesteps(n)
    grid = explicit_grid(n)
    abar = sched.alphas_cumprod.double()
    for row, k in enumerate(i.tolist()):
        t = grid[n - 1 - k]  # student grid index k -> timestep t_{k+1}
        a = abar[t]
        x = x_t[row : row + 1]
        eps = (x - a**0.5 * target[row]) / (1 - a) ** 0.5
        pred = eps if ptype == "epsilon" else (a**0.5 * eps - (1 - a) ** 0.5 * target[row])
        got = student.step(pred, t, x, return_dict=False)[0]
        # The teacher's two steps, written out independently of the objective.
        fine = explicit_grid(2 * n)
        t_mid = fine[fine.index(t) + 1]
        t_end = fine[fine.index(t) + 2] if fine.index(t) + 2 < 2 * n else None
        a_end = abar[t_end] if t_end is not None else torch.tensor(1.0, dtype=torch.float64)
        e = emb[row : row + 1]
        z1, _ = ddim_move(obj.teacher(x, t, timestep_cond=e).sample, x, a, abar[t_mid], ptype)
        z2, _ = ddim_move(
            obj.teacher(z1, t_mid, timestep_cond=e).sample, z1, abar[t_mid], a_end, ptype
        )
        assert (got - z2).abs().max() < 1e-5, (n, k)
        assert (target[row] - z2).abs().max() > 1e-6 or t_end is None  # a real change of x


# ----------------------------------------------------------------------------- the student


def guided_cfg(caches, teacher, run_dir, **options) -> TrainConfig:  # noqa: F811
    opts = {"guidance_dim": 8, "w_min": 1.0, "w_max": 4.0, "steps": 4} | options
    return make_cfg(
        caches, run_dir, steps=4, objective="guided", objective_options=opts,
        init_from=str(teacher), teacher=str(teacher), caption_dropout=0.0,
    )  # fmt: skip


def test_options_and_errors(teacher):  # noqa: F811
    base = TrainConfig(objective="guided", init_from=str(teacher), teacher=str(teacher))
    obj = build_objective(base)
    assert obj.unet_overrides() == {"time_cond_proj_dim": 256}
    assert obj.solver_forwards_per_step == 2
    for bad, match in (
        ({"stage": "x"}, "stage"),
        ({"w_min": 3.0, "w_max": 2.0}, "w_min"),
        ({"steps": 0}, "steps"),
        ({"nope": 1}, "nope"),
    ):
        with pytest.raises(ConfigError, match=match):
            build_objective(base.replace(objective_options=bad))
    with pytest.raises(ConfigError, match="init_from"):
        build_objective(base.replace(init_from=None))
    with pytest.raises(ConfigError, match="teacher"):
        build_objective(base.replace(teacher=None))


def test_zero_guidance_projection_reproduces_the_teacher_and_its_w1_loss_is_zero(
    teacher,  # noqa: F811
    caches,  # noqa: F811
    tmp_path,
):
    """Grown at zero, the student is the teacher at every w: its stage-one loss is 0 at
    w = 1 (the teacher's CFG at w = 1 is its conditional prediction) and not at w = 4."""
    from ldmscale.modelfolder import read_model_meta
    from ldmscale.objectives.base import SetupContext, load_teacher

    spec = read_model_meta(teacher).unet_spec.replace(time_cond_proj_dim=8)
    student, parent = init_from(teacher, spec), load_teacher(teacher)
    g = torch.Generator().manual_seed(2)
    x, ctx = torch.randn(3, C, H, H, generator=g), torch.randn(3, T, D, generator=g)
    t = torch.tensor([999, 500, 19])
    emb = guidance_scale_embedding(torch.tensor([0.0, 2.5, 7.0]), 8)
    with torch.no_grad():
        want = parent(x, t, encoder_hidden_states=ctx).sample
        got = student(x, t, encoder_hidden_states=ctx, timestep_cond=emb).sample
    assert (got - want).abs().max() < 1e-6

    from ldmscale.cache import load_conditioning

    cond = load_conditioning(caches["latents"], caches["embeddings"])
    batch = {k: v[:4] for k, v in cond.rows.items() if k in Guided.required_keys}
    losses = {}
    for w in (1.0, 4.0):
        cfg = guided_cfg(caches, teacher, tmp_path / "x", w_min=w, w_max=w)
        obj = build_objective(cfg)
        obj.setup(SetupContext(student, spec, None, cfg, cond, torch.device("cpu")))
        with torch.no_grad():
            losses[w] = float(obj.loss(student, batch, torch.Generator().manual_seed(0)))
    assert losses[1.0] < 1e-10 and losses[4.0] > 1e-4, losses


@pytest.fixture(scope="module")
def chain(tmp_path_factory, caches, teacher):  # noqa: F811
    """Stage one (hint 8 steps) and two progressive stages (4, 2), 4 training steps each."""
    base = guided_cfg(caches, teacher, tmp_path_factory.mktemp("guided") / "c8")
    cfgs = guided_stage_configs(base, str(teacher), [8, 4, 2])
    return cfgs, [train(c, progress=False) for c in cfgs]


def test_chain_of_stage_runs(chain, teacher):  # noqa: F811
    from ldmscale.model import load_model
    from ldmscale.modelfolder import model_hash
    from ldmscale.sampling import SamplerConfig, generate

    cfgs, runs = chain
    assert [Path(r).name for r in runs] == ["c8-g8", "c8-pd4", "c8-pd2"]
    parents = [str(teacher), str(runs[0] / "model"), str(runs[1] / "model")]
    for cfg, run, parent, n in zip(cfgs, runs, parents, (8, 4, 2)):
        assert cfg.teacher == cfg.init_from == parent
        info = json.loads((run / "model" / "ldmscale_model.json").read_text())
        assert info["task"] == "distilled" and info["parent"]["hash"] == model_hash(parent)
        hint = info["sampler_hint"]
        assert (hint["name"], hint["steps"], hint["timestep_grid"]) == (
            "ddim_grid",
            n,
            explicit_grid(n),
        )
        assert hint["stage"] == ("guidance" if n == 8 else "progressive")
        assert info["unet_spec"]["time_cond_proj_dim"] == 8
    # The log's and the export's training compute count the teacher's 2 forwards per row.
    info = json.loads((runs[0] / "model" / "ldmscale_model.json").read_text())
    log = [json.loads(line) for line in (runs[0] / "log.jsonl").read_text().splitlines()]
    want = info["norm_cost"] * 4 * (1 + 2 / 3)
    assert log[-1]["step"] == 4 and log[-1]["train_compute"] == pytest.approx(want, rel=1e-12)
    assert info["train_compute"] == pytest.approx(want, rel=1e-12)
    model = load_model(runs[-1] / "model", text_encoder=RandomEncoder())
    res = generate(model, ["a", "b"], [0, 1], SamplerConfig("ddim_grid", 2, 3.0), progress=False)
    assert res.evaluations_per_step == 1 and torch.isfinite(res.latents).all()
    with pytest.raises(ConfigError, match="halve"):
        guided_stage_configs(cfgs[0], str(teacher), [8, 3])


def test_cli_distill_guided(tmp_path, teacher):  # noqa: F811
    from ldmscale.cli import build_parser
    from ldmscale.cli.distill import config_from_args

    argv = ["distill", "--method", "guided", "--teacher", str(teacher)]
    argv += ["--run-dir", str(tmp_path / "g"), "--w-max", "5", "--steps", "7"]
    cfgs = config_from_args(build_parser().parse_args([*argv, "--chain", "16,8,4"]))
    assert [c.objective_options["steps"] for c in cfgs] == [16, 8, 4]
    assert [c.objective_options["stage"] for c in cfgs] == ["guidance", "progressive"] * 1 + [
        "progressive"
    ]
    assert all(c.objective_options["w_max"] == 5.0 and c.steps == 7 for c in cfgs)
    assert cfgs[1].teacher == str(tmp_path / "g-g16" / "model")
    staged = config_from_args(build_parser().parse_args([*argv, "--stage-steps", "3,2,2,1"]))
    assert [c.steps for c in staged] == [3, 2, 2, 1]
    with pytest.raises(ValueError, match="--style"):
        config_from_args(build_parser().parse_args([*argv, "--style", "codi"]))


@pytest.mark.slow
def test_progressive_student_learns_its_teachers_two_steps(tmp_path, caches, teacher):  # noqa: F811
    """Seeded learning test: a progressive stage (N = 2, teacher on the 4-point grid) brings
    the student's 2-step ``ddim_grid`` output closer to the teacher's 4-step output than the
    teacher's own 2 steps are, by a paired bootstrap over 48 seeds (mean squared error)."""
    import numpy as np
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    from ldmscale.paired import paired_difference

    # The teacher: a guidance-conditioned stage-one student (w fixed to 1) of the tiny t2i model.
    stage_one = guided_cfg(caches, teacher, tmp_path / "g", w_min=1.0, w_max=1.0, steps=4)
    parent = train(stage_one.replace(steps=2), progress=False) / "model"
    cfg = guided_cfg(
        caches, parent, tmp_path / "pd", stage="progressive", steps=2, w_min=1.0, w_max=1.0
    ).replace(steps=100, batch_size=16, lr=2e-4, warmup_steps=10, checkpoint_every=100,
              log_every=20, ema_decay=0.9)  # fmt: skip
    student = UNet2DConditionModel.from_pretrained(train(cfg, progress=False) / "model/unet")
    teach = UNet2DConditionModel.from_pretrained(parent / "unet")
    ctx = load_file(caches["embeddings"])["embeddings"][:16].repeat(3, 1, 1)
    x = torch.randn(48, C, H, H, generator=torch.Generator().manual_seed(7))
    emb = guidance_scale_embedding(torch.zeros(48), 8)

    def sample(net, steps: int) -> torch.Tensor:
        sched = make_scheduler(make_noise_scheduler().config, "ddim_grid")
        sched.set_timesteps(steps)
        z = x
        for t in sched.timesteps:
            pred = net(z, t, encoder_hidden_states=ctx, timestep_cond=emb).sample
            z = sched.step(pred, t, z, return_dict=False)[0]
        return z

    with torch.no_grad():
        end, two, learnt = sample(teach, 4), sample(teach, 2), sample(student, 2)

    def err(z: torch.Tensor) -> np.ndarray:
        return (z - end).square().mean(dim=(1, 2, 3)).numpy()

    res = paired_difference(err(learnt), err(two), np.mean, n_boot=1000, seed=0)
    assert res.outcome() == "a" and err(learnt).mean() < 0.7 * err(two).mean(), (
        res, err(learnt).mean(), err(two).mean()
    )  # fmt: skip
