"""The study task ``distill``: its options, its run folders, its cells in the one results store,
and its report sections (Fig. 13, Fig. 19, the readings), on a micro study."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import micro_study
from ldmscale.config import ConfigError

OPTIONS = {
    "consistency_steps": 3,
    "guided_chain": [4, 2],
    "guided_steps": [2, 2],
    "batch_size": 8,
    "lcm_steps": [2, 4],
}


def distill_study(out: Path, **options):
    cfg = micro_study(out)
    return cfg.replace(
        sweep=cfg.sweep.replace(steps=(2, 4), timestep_spacings=("trailing",)),
        tasks=("distill",),
        task_options={"distill": {**OPTIONS, **options}},
    )


def test_options_layout_and_cells(tmp_path):
    from ldmscale.study.task_distill import kind_of, options, run_configs, sweep_settings

    cfg = distill_study(tmp_path / "s")
    assert options(cfg).consistency_style == "codi"
    runs = run_configs(cfg, 8)
    assert list(runs) == ["cd", "guided-g4", "guided-pd2"]
    teacher = str(cfg.run_dir(8) / "model")
    assert runs["cd"].objective == "consistency" and runs["cd"].init_from == teacher
    assert runs["cd"].teacher is None  # CoDi: the target takes the ODE step
    assert runs["guided-pd2"].teacher == str(tmp_path / "s/distill/c8/guided-g4/model")
    assert [r.steps for r in runs.values()] == [3, 2, 2]
    assert kind_of(str(tmp_path / "s/distill/c8/guided-pd2/model")) == "guided-pd2"
    assert kind_of(teacher) == "teacher"
    settings = sweep_settings(cfg)
    # per width: lcm at 2 and 4 steps, ddim at 4 (the consistency model), one cell per guided
    # stage at its own steps; each at the 2 guidance values
    assert len(settings) == 2 * (3 + 2) * 2
    assert {(s[1], s[2]) for s in settings} == {
        ("lcm", 2), ("lcm", 4), ("ddim", 4), ("ddim_grid", 4), ("ddim_grid", 2)
    }  # fmt: skip
    # What is only sampled is not a training input: the distill folders stay valid.
    from ldmscale.study.stages import build_stages

    def keys(cfg):
        return {s.id: s.key(cfg) for s in build_stages(cfg) if s.name.startswith("distill")}

    more = keys(distill_study(tmp_path / "s", lcm_steps=[1, 2, 4]))
    base, trained = keys(cfg), keys(distill_study(tmp_path / "s", consistency_steps=4))
    assert more["distill/c8"] == base["distill/c8"] != trained["distill/c8"]
    assert more["distill-sweep"] != base["distill-sweep"]
    # The dry run counts the guided stages' cells at 1 evaluation per step, CFG twice.
    from ldmscale.study import dry_run

    text = dry_run(cfg, calibrate=False)
    n = 8  # images per cell
    want = 2 * 2 * n * ((2 + 4 + 4) * 2 + (4 + 2) * 1)  # widths x w x images x steps x evals
    assert f"distill sweep: 20 cells, {want:,} per-image UNet evaluations" in text
    assert "x1.67 (consistency), x1.67 (guided)" in text
    for bad, match in (
        ({"widths": [12]}, "widths"),
        ({"guided_steps": [2]}, "guided_steps"),
        ({"consistency_style": "x"}, "consistency_style"),
        ({"nope": 1}, "nope"),
        ({"consistency_options": {"style": "lcm"}}, "consistency_style"),
        ({"consistency_options": {"grid": 10}}, "grid"),
        ({"consistency_options": {"loss": "l1"}}, "loss"),
    ):
        with pytest.raises(ConfigError, match=match):
            options(distill_study(tmp_path / "s", **bad))
    # Further consistency options reach the run's objective and its stage key.
    grid = distill_study(tmp_path / "s", consistency_options={"num_ddim_timesteps": 10})
    cd = run_configs(grid, 8)["cd"].objective_options
    assert cd == {"style": "codi", "num_ddim_timesteps": 10}
    assert keys(grid)["distill/c8"] != base["distill/c8"]


@pytest.mark.slow
def test_distill_task_on_a_micro_study(tmp_path):
    from ldmscale.store import ResultsStore
    from ldmscale.study import run_study
    from ldmscale.study.stages import default_stages

    cfg = distill_study(tmp_path / "s")
    assert default_stages(cfg) == (
        "data", "autoencoder", "train", "sweep", "confirm", "distill", "distill-sweep", "report"
    )  # fmt: skip
    result = run_study(cfg, progress=False, log=lambda s: None)
    root = Path(cfg.out_dir)
    for c in (8, 16):
        for kind in ("cd", "guided-g4", "guided-pd2"):
            info = json.loads((root / f"distill/c{c}/{kind}/model/ldmscale_model.json").read_text())
            assert info["task"] == "distilled"
    with ResultsStore(root / "results.sqlite") as store:
        rows = store.rows()
    distilled = [r for r in rows if "/distill/" in r["model_path"]]
    assert len(distilled) == 20

    # The guided stages take w as an embedding: one UNet evaluation per step, even at w = 3.
    # The consistency student runs CFG's doubled batch: twice the FLOPs per image and step.
    def flops(c, sampler, steps):
        (r,) = [
            r for r in distilled
            if (r["c"], r["sampler"], r["steps"], r["guidance"]) == (c, sampler, steps, 3.0)
        ]  # fmt: skip
        return r["flops"] / steps

    for c in (8, 16):
        assert flops(c, "ddim_grid", 2) == pytest.approx(flops(c, "lcm", 2) / 2, rel=0.02)
    page = result.report.read_text()
    assert "Fig. 13" in page and "Fig. 19" in page and "(a) distilled" in page
    figs = root / "report" / "figures"
    assert (figs / "distill_fig13.png").stat().st_size > 1000
    readings = json.loads((figs / "distill_readings.json").read_text())
    assert len(readings["a"]) == 2 and len(readings["b"]) == 1 and len(readings["c"]) == 4
    assert readings["summary"]["a"].startswith("(a) distilled (4 steps)")
    assert "ties" in readings["summary"]["a"] and "(c)" in readings["summary"]["c"]
    for r in readings["a"] + readings["b"] + readings["c"]:
        assert r["method"] == "paired" and r["CI lo"] <= r["A - B"] <= r["CI hi"]
    # Rerun: every distillation stage is done and nothing is evaluated again.
    logs: list[str] = []
    run_study(cfg, progress=False, log=logs.append)
    assert not any("distilling" in line for line in logs)
