"""The one-command study end to end on a micro configuration: every stage, then resume."""

from __future__ import annotations

import json

import pytest

from ldmscale.autoencoder import AutoencoderConfig
from ldmscale.cli import main
from ldmscale.config import ConfigError
from ldmscale.sampling import SamplerConfig
from ldmscale.store import ResultsStore
from ldmscale.study import CONFIRM_SEED0, PRESETS, StudyConfig, dry_run, preset, run_study
from ldmscale.sweep import SweepConfig
from ldmscale.text import TextEncoderSpec
from ldmscale.train import TrainConfig


def micro(out_dir) -> StudyConfig:
    return StudyConfig(
        out_dir=str(out_dir),
        preset="micro",
        n_train=48,
        n_val=16,
        resolution=16,
        autoencoder=AutoencoderConfig(
            resolution=16,
            block_out_channels=(8, 16),
            norm_num_groups=8,
            steps=20,
            val_images=16,
            scale_images=32,
        ),
        text_encoder=TextEncoderSpec(kind="minilm", max_length=8),
        widths=(8, 16),
        train=TrainConfig(
            steps=4,
            batch_size=8,
            warmup_steps=1,
            checkpoint_every=2,
            log_every=2,
            layers_per_block=1,
        ),
        preview=SamplerConfig(name="ddim", steps=2, guidance=2.0),
        preview_prompts=4,
        sweep=SweepConfig(
            samplers=("ddim", "dpmpp"),
            steps=(1, 2),
            guidance=(1.5, 3.0),
            n_images=8,
            batch_size=8,
            bootstrap=20,
            metrics=("fd_probe", "alignment"),
            probe_steps=20,
        ),
        primary_metric="fd_probe",
        paper_table=False,
    )


@pytest.mark.slow
def test_study_runs_every_stage_and_resumes(tmp_path):
    cfg = micro(tmp_path / "study")
    lines: list[str] = []
    result = run_study(cfg, progress=False, log=lines.append)

    assert set(result.timings) == {
        "data", "autoencoder", "train", "samples", "sweep", "confirm", "floors", "report"
    }  # fmt: skip
    for c in cfg.widths:
        assert (cfg.run_dir(c) / "model" / "ldmscale_model.json").is_file()
        samples = json.loads((cfg.root / "samples" / f"c{c}" / "samples.json").read_text())
        assert len(samples["prompts"]) == cfg.preview_prompts
    with ResultsStore(cfg.root / "results.sqlite") as store:
        rows = store.rows()
    # 2 widths x 2 samplers x 2 step counts x 2 guidance scales, then one optimum per
    # (width, sampler, steps) group again on the fresh seed set
    fresh = [r for r in rows if r["seed0"] == CONFIRM_SEED0]
    rows = [r for r in rows if r["seed0"] == 0]
    assert len(rows) == 16
    assert len(fresh) == 8
    for f in fresh:  # the fresh cell repeats a selection-set setting on other seeds
        assert any(
            (r["model_hash"], r["sampler"], r["steps"], r["guidance"])
            == (f["model_hash"], f["sampler"], f["steps"], f["guidance"])
            for r in rows
        )
    floors = json.loads((cfg.root / "floors.json").read_text())
    assert floors["meta"]["n"] == cfg.sweep.n_images
    assert 0 <= floors["alignment"]["reconstruction"]["value"] <= 1
    assert {r["c"] for r in rows} == {8, 16}
    assert all("fd_probe" in r["metrics"] and "alignment" in r["metrics"] for r in rows)
    html = result.report.read_text()
    assert "FD-probe" in html and "<img" in html
    assert result.verdict and "Budget" in result.verdict

    # Equal sampling cost for the grids: the smaller width gets at least as many steps.
    steps = {
        c: json.loads((cfg.root / "samples" / f"c{c}" / "samples.json").read_text())["sampler"][
            "steps"
        ]
        for c in cfg.widths
    }
    assert steps[8] >= steps[16] == cfg.preview.steps

    # Running again resumes: nothing is retrained or recomputed.
    lines.clear()
    again = run_study(cfg, progress=False, log=lines.append)
    assert any("c=8: trained model found" in line for line in lines)
    assert any("computed 0 cells" in line for line in lines)
    assert again.timings["train"] < result.timings["train"]

    # A different config in the same folder is refused, naming the fix.
    with pytest.raises(ConfigError, match="different config"):
        run_study(cfg.replace(widths=(8,)), progress=False, log=lines.append)


def test_presets_round_trip_and_validate(tmp_path):
    for name in PRESETS:
        cfg = preset(name)
        path = cfg.save(tmp_path / f"{name}.toml")
        assert StudyConfig.load(path) == cfg
    assert preset("tiny").sweep.n_images >= 1
    assert len(preset("tiny").widths) >= 3
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("huge")
    with pytest.raises(ConfigError, match="differs from"):
        preset("tiny").replace(resolution=64)


def test_dry_run_prints_plan_and_cost(capsys):
    assert main(["study", "--preset", "tiny", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "sweep:" in out and "train compute" in out
    # The paper preset's plan (two widths to keep the test short): 64 x 64 latents, CLIP context.
    text = dry_run(preset("paper").replace(widths=(64, 768)))
    assert "768" in text and "4x64x64" in text and "clip" in text
