"""Tests for ldmscale.sweep's planning: model identity (sweep.models), the config, cells, cell ids,
the grid and explicit cell lists (sweep.plan).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import make_tiny_ldmscale_model, tiny_unet_spec
from ldmscale.config import ConfigError
from ldmscale.family import build_unet
from ldmscale.store import ResultsStore
from ldmscale.sweep import (
    Cell,
    SweepConfig,
    SweepError,
    describe_model,
    plan_sweep,
    run_sweep,
)
from sweep_helpers import OLD_PROTOCOL, PROMPTS, make_models, small_cfg, synthetic_evaluate


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_sd_dir) -> list[str]:
    return make_models(tmp_path_factory.mktemp("models"), tiny_sd_dir)


def test_describe_model_reads_identity(models, tmp_path):
    a, b = describe_model(models[0]), describe_model(models[1])
    assert (a.c, b.c) == (8, 16)
    assert a.name == "c8" and a.norm_cost == pytest.approx(8 / 320)
    unet = build_unet(tiny_unet_spec(8))
    # counted from the UNet safetensors header
    assert a.params == sum(p.numel() for p in unet.parameters())
    assert a.hash != b.hash and len(a.hash) == 32
    # the run folder (parent of model/) is accepted and names the same model
    assert describe_model(Path(models[0]).parent).hash == a.hash
    with pytest.raises(SweepError, match="not a model folder"):
        describe_model(tmp_path)
    with pytest.raises(SweepError, match="not found"):
        describe_model(tmp_path / "missing")


def test_model_hash_changes_with_weights(tmp_path, tiny_sd_dir):
    from safetensors.numpy import save_file

    folder = make_tiny_ldmscale_model(tmp_path, tiny_sd_dir, "m", 8, 0.1)
    before = describe_model(folder).hash
    save_file(
        {"w": np.ones((8, 3), np.float32)},
        str(folder / "unet" / "diffusion_pytorch_model.safetensors"),
    )
    assert describe_model(folder).hash != before


def test_plan_counts_and_dpmpp_limit(models, tmp_path):
    cfg = small_cfg(models, tmp_path)
    plan = plan_sweep(cfg)
    # 2 models x (ddim: 3 step counts + dpmpp: 2, 32 > 20 skipped) x 3 guidance
    assert len(plan.cells) == 2 * (3 + 2) * 3
    assert not any(c.sampler == "dpmpp" and c.steps > 20 for c in plan.cells)
    assert any("DPM-Solver++" in n and "[32]" in n for n in plan.notes)
    # every cell: the same prompts/seeds, cycled captions, seeds seed0..seed0+N-1
    cell = plan.cells[0]
    assert cell.seeds == tuple(range(16))
    assert cell.prompts[:4] == PROMPTS and cell.prompts[4] == PROMPTS[0]
    assert len({c.cell_id for c in plan.cells}) == len(plan.cells)
    # UNet evaluations: images x steps x 2 (all guidance scales here are > 1)
    assert plan.unet_evals == sum(16 * c.steps * 2 for c in plan.cells)
    # a guidance of 1 means no CFG batch
    one = plan.context.cell(cell.model, "ddim", 4, 1.0, 16)
    assert not one.cfg and one.unet_evals == 16 * 4


def test_cell_id_is_deterministic_and_sensitive(models, tmp_path):
    cfg = small_cfg(models, tmp_path)
    ids = [c.cell_id for c in plan_sweep(cfg).cells]
    assert ids == [c.cell_id for c in plan_sweep(cfg).cells]
    changed = {
        "seed0": 1,
        "prompts": PROMPTS[::-1],
        "metrics": ("fd_probe",),
        "bootstrap": 11,
    }
    for key, value in changed.items():
        other = {c.cell_id for c in plan_sweep(cfg.replace(**{key: value})).cells}
        assert other.isdisjoint(ids), key
    # the executor and batch size do not change what a cell is
    assert ids == [c.cell_id for c in plan_sweep(cfg.replace(executor="ray")).cells]


def test_config_validation_and_roundtrip(models, tmp_path):
    cfg = small_cfg(models, tmp_path)
    path = cfg.save(tmp_path / "sweep.toml")
    assert SweepConfig.load(path) == cfg
    from ldmscale.config import ConfigError

    with pytest.raises(ConfigError, match="samplers"):
        SweepConfig(samplers=("euler",))
    with pytest.raises(ConfigError, match="executor"):
        SweepConfig(executor="dask")
    assert SweepConfig().guidance == (1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0)
    with pytest.raises(SweepError, match="no prompts"):
        plan_sweep(SweepConfig(models=tuple(models)))
    with pytest.raises(SweepError, match="no models"):
        plan_sweep(SweepConfig(prompts=PROMPTS))


def test_prompts_from_dataset_captions(models, tmp_path, tiny_shapes):
    from ldmscale.data import load_dataset

    cfg = small_cfg(
        models, tmp_path, prompts=(), dataset=str(tiny_shapes), resolution=16, n_images=20
    )
    plan = plan_sweep(cfg)
    captions = load_dataset(tiny_shapes, split="validation", resolution=16).captions
    cell = plan.cells[0]
    assert list(cell.prompts[:16]) == list(captions)  # first N in file order, then cycled
    assert cell.prompts[16:] == tuple(captions[:4])
    assert cell.protocol["reference"]["fingerprint"]
    assert cell.protocol["prompts"]["cycled"] is True


#: A cell and row-cache family computed by the code of 4f38506, before spacing and seed sets
#: were part of a cell: a ``leading`` cell of :data:`OLD_PROTOCOL` on seed set 0 keeps these ids.
OLD_CELL_ID = "ad8c2f4f887b2608c7beb75b"
OLD_FAMILY = "b63cf36ae2fd39b57dc825f3"


def _old_style_cell(**over) -> Cell:
    from ldmscale.sweep import ModelInfo

    model = ModelInfo("/m", "m", "0123456789abcdef0123456789abcdef", 8, 100, 0.025, {})
    kw = dict(
        model=model,
        sampler="ddim",
        steps=8,
        guidance=3.0,
        prompts=("a red circle", "a blue square"),
        seeds=(0, 1),
        protocol=OLD_PROTOCOL,
    )
    kw.update(over)
    return Cell(**kw)


def test_a_guidance_embedding_model_counts_one_evaluation_per_step():
    """A distilled model that takes w as an embedding runs one forward per step at any w: its
    cells count images x steps, not the doubled batch, and are timed un-doubled."""
    from ldmscale.sweep import ModelInfo
    from ldmscale.sweep.estimate import sampling_seconds

    embedded = ModelInfo(
        "/d", "d", "f" * 32, 8, 100, 0.025, {"unet_spec": {"time_cond_proj_dim": 8}}
    )
    plain, dist = _old_style_cell(steps=4), _old_style_cell(steps=4, model=embedded)
    assert (plain.cfg, plain.evaluations_per_step, plain.unet_evals) == (True, 2, 2 * 4 * 2)
    assert (dist.cfg, dist.evaluations_per_step, dist.unet_evals) == (False, 1, 2 * 4)
    assert dist.cell_id != plain.cell_id
    sd_embedded = ModelInfo("/s", "s", "e" * 32, 8, 100, None, {"time_cond_proj_dim": 16})
    assert sd_embedded.guidance_embedded and not plain.model.guidance_embedded
    timing = {"unet_s": 1.0, "unet_cfg_s": 3.0}
    assert sampling_seconds(4, 3.0, 2, 2, timing) == 12.0
    assert sampling_seconds(4, 3.0, 2, 2, timing, guidance_embedded=True) == 4.0


def test_leading_cells_keep_their_old_ids_and_families():
    cell = _old_style_cell()
    assert cell.timestep_spacing == "leading"
    assert cell.cell_id == OLD_CELL_ID
    assert cell.family == OLD_FAMILY
    assert cell.sampler_config == {"name": "ddim", "steps": 8, "guidance": 3.0}
    # explicitly leading is the same cell; another spacing or seed set is not
    assert _old_style_cell(timestep_spacing="leading").cell_id == OLD_CELL_ID
    trailing = _old_style_cell(timestep_spacing="trailing")
    assert trailing.cell_id != OLD_CELL_ID and trailing.family != OLD_FAMILY
    assert trailing.sampler_config["timestep_spacing"] == "trailing"
    fresh = _old_style_cell(seeds=(10_000, 10_001))
    assert fresh.seed0 == 10_000
    assert fresh.cell_id != OLD_CELL_ID and fresh.family != OLD_FAMILY


def test_spacings_are_validated():
    assert SweepConfig().timestep_spacings == ("leading",)
    with pytest.raises(ConfigError, match="timestep_spacings"):
        SweepConfig(timestep_spacings=("even",))
    with pytest.raises(ConfigError, match="timestep_spacings"):
        SweepConfig(timestep_spacings=())
    with pytest.raises(ConfigError, match="seed0"):
        SweepConfig(seed0=-1)


def test_spacing_is_a_grid_dimension_stored_with_each_cell(models, tmp_path):
    base = small_cfg(models, tmp_path)
    both = base.replace(timestep_spacings=("trailing", "leading"))
    leading_ids = [c.cell_id for c in plan_sweep(base).cells]
    plan = plan_sweep(both)
    assert len(plan.cells) == 2 * len(leading_ids)
    by_spacing = {s: [c for c in plan.cells if c.timestep_spacing == s] for s in SPACINGS_USED}
    # the leading half of the two-spacing grid is exactly the old grid
    assert sorted(c.cell_id for c in by_spacing["leading"]) == sorted(leading_ids)
    assert {c.cell_id for c in by_spacing["trailing"]}.isdisjoint(leading_ids)
    # guidance is optimized within (model, sampler, steps, spacing)
    assert {c.group[3] for c in plan.cells} == {"leading", "trailing"}
    assert len({c.group for c in plan.cells}) == 2 * len({c.group for c in by_spacing["leading"]})
    from ldmscale.sweep import grid_settings

    assert {s[3] for s in grid_settings(both)} == {"leading", "trailing"}
    with ResultsStore(both.store) as store:
        run_sweep(both, store, synthetic_evaluate, progress=False)
        rows = store.rows()
        trailing = store.rows(timestep_spacing="trailing")
    assert len(rows) == len(plan.cells) and len(trailing) == len(leading_ids)
    assert all(
        r["provenance"]["sampler_config"]["timestep_spacing"] == "trailing" for r in trailing
    )
    assert {r["timestep_spacing"] for r in rows} == {"leading", "trailing"}
    assert {r["seed0"] for r in rows} == {0}


SPACINGS_USED = ("leading", "trailing")


def test_plan_cells_evaluates_exactly_the_listed_settings_and_resumes(models, tmp_path):
    from ldmscale.sweep import plan_cells

    cfg = small_cfg(models[:1], tmp_path)  # the grid names only models[0]
    settings = [
        (models[1], "ddim", 50, 3.0, "trailing"),
        (models[0], "ddim", 8, 3.0, "leading"),  # also a grid cell
        (models[1], "ddpm", 16, 1.0, "trailing"),
        (models[0], "dpmpp", 32, 2.0, "trailing"),  # above dpmpp_max_steps: kept, noted
        (models[1], "ddim", 50, 3.0, "trailing"),  # a duplicate
    ]
    plan = plan_cells(cfg, settings)
    got = [
        (c.model.name, c.sampler, c.steps, c.guidance, c.timestep_spacing, c.n_images)
        for c in plan.cells
    ]
    # grouped by model in order of first appearance, the duplicate dropped
    assert got == [
        ("c16", "ddim", 50, 3.0, "trailing", 16),
        ("c16", "ddpm", 16, 1.0, "trailing", 16),
        ("c8", "ddim", 8, 3.0, "leading", 16),
        ("c8", "dpmpp", 32, 2.0, "trailing", 16),
    ]
    assert any("duplicate" in n for n in plan.notes) and any("kept" in n for n in plan.notes)
    grid_ids = {c.cell_id for c in plan_sweep(cfg).cells}
    assert plan.cells[2].cell_id in grid_ids  # the same cell as the grid's
    with ResultsStore(cfg.store) as store:
        run_sweep(cfg, store, synthetic_evaluate, progress=False)  # the grid first
        summary = run_sweep(cfg, store, synthetic_evaluate, progress=False, settings=settings)
        assert (summary.planned, summary.skipped, summary.computed) == (4, 1, 3)
        again = run_sweep(cfg, store, synthetic_evaluate, progress=False, settings=settings)
        assert again.computed == 0 and again.skipped == 4
        ids = store.cell_ids()
    assert {c.cell_id for c in plan.cells} <= ids and len(ids) == len(grid_ids) + 3
    # a fresh seed set of the same settings is new cells with seeds 10000 onwards
    fresh = plan_cells(cfg.replace(seed0=10_000), settings[:1])
    assert fresh.cells[0].seeds == tuple(range(10_000, 10_016))
    assert fresh.cells[0].cell_id not in ids
    # an explicit context fixes prompts, seeds and protocol
    ctx = plan_sweep(cfg).context
    assert plan_cells(cfg, settings[:1], ctx).cells[0].cell_id == plan.cells[0].cell_id
    for bad, match in [
        ([(models[0], "euler", 4, 2.0, "leading")], "unknown sampler"),
        ([(models[0], "ddim", 0, 2.0, "leading")], "steps"),
        ([(models[0], "ddim", 4.5, 2.0, "leading")], "steps"),
        ([(models[0], "ddim", 4, -1.0, "leading")], "guidance"),
        ([(models[0], "ddim", 4, 2.0, "even")], "timestep spacing"),
        ([(models[0], "ddim", 4, 2.0)], "model_path, sampler"),
        ([], "at least one"),
    ]:
        with pytest.raises(SweepError, match=match):
            plan_cells(cfg, bad)
    with pytest.raises(SweepError, match="not both"):
        run_sweep(cfg, progress=False, plan=plan, settings=settings)


def test_checkpoint_keys_are_read_into_rows(tmp_path, tiny_sd_dir):
    import shutil

    final = make_tiny_ldmscale_model(tmp_path, tiny_sd_dir, "c8-seed1", 8, 0.025)
    meta_path = final / "ldmscale_model.json"
    keys = {"total_steps": 400, "seed": 1, "run": "c8-seed1"}
    meta = json.loads(meta_path.read_text())

    def at(step: int) -> str:
        return json.dumps(
            {**meta, **keys, "train_step": step, "train_compute": 0.025 * step,
             "images_seen": 64 * step}
        )  # fmt: skip

    meta_path.write_text(at(400))
    ckpt = final.parent / "evals" / "step-0000100"
    shutil.copytree(final, ckpt)
    (ckpt / "ldmscale_model.json").write_text(at(100))
    a, b = describe_model(final), describe_model(ckpt)
    assert (a.name, b.name) == ("c8-seed1", "c8-seed1/step-0000100")
    assert a.hash != b.hash  # its own model, though the weights here are the same
    assert (b.train_step, b.total_steps, b.train_compute) == (100, 400, 2.5)
    assert (b.images_seen, b.train_seed, b.run) == (6400, 1, "c8-seed1")
    plain = describe_model(make_tiny_ldmscale_model(tmp_path, tiny_sd_dir, "old", 8, 0.025))
    assert (plain.train_step, plain.train_compute, plain.train_seed, plain.run) == (None,) * 4
    # only the step recorded: the compute is norm_cost x step
    only_step = make_tiny_ldmscale_model(tmp_path, tiny_sd_dir, "partial", 8, 0.025)
    m = json.loads((only_step / "ldmscale_model.json").read_text())
    (only_step / "ldmscale_model.json").write_text(json.dumps({**m, "train_step": 200}))

    cfg = SweepConfig(
        models=(str(final), str(ckpt), str(plain.path), str(only_step)),
        samplers=("ddim",),
        steps=(4,),
        guidance=(2.0,),
        n_images=4,
        prompts=PROMPTS,
        store=str(tmp_path / "r.sqlite"),
        bootstrap=0,
    )
    with ResultsStore(cfg.store) as store:
        run_sweep(cfg, store, synthetic_evaluate, progress=False)
        rows = {r["model"]: r for r in store.rows()}
    assert (rows["c8-seed1"]["train_step"], rows["c8-seed1"]["train_compute"]) == (400, 10.0)
    ck = rows["c8-seed1/step-0000100"]
    assert (ck["train_step"], ck["train_compute"], ck["train_seed"]) == (100, 2.5, 1)
    assert ck["provenance"]["model_config"]["images_seen"] == 6400
    assert (rows["old"]["train_step"], rows["old"]["train_compute"]) == (None, None)
    assert rows["old"]["train_seed"] is None
    assert rows["partial"]["train_compute"] == pytest.approx(0.025 * 200)
