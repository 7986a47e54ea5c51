"""The one-command study end to end on a micro configuration: every stage, then resume."""

from __future__ import annotations

import json

import pytest

from conftest import micro_study
from ldmscale.cli import main
from ldmscale.config import ConfigError
from ldmscale.family import UNetSpec, normalized_cost
from ldmscale.store import ResultsStore
from ldmscale.study import (
    CONFIRM_SEED0,
    PRESETS,
    StageMismatchError,
    StudyConfig,
    dry_run,
    preset,
    run_study,
)
from ldmscale.sweep import grid_settings


@pytest.mark.slow
def test_study_runs_every_stage_and_resumes(tmp_path, capfd):
    cfg = micro_study(tmp_path / "study")
    lines: list[str] = []
    result = run_study(cfg, progress=False, log=lines.append)
    # progress=False draws no bar: not the probe's, the dataset checks' nor the weight loading's
    err = capfd.readouterr().err
    assert "%|" not in err and "it/s]" not in err, err[-2000:]

    assert set(result.timings) == {
        "data", "autoencoder", "train", "samples", "sweep", "confirm", "checkpoints", "floors",
        "report",
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
    # Fig. 3: each width's checkpoint at step 2 and its final model (step 4), at the one
    # fixed setting (ddim x2, w = 3, trailing), with the training compute on the row
    ckpt = [r for r in rows if r["seed0"] == 0 and r["timestep_spacing"] == "trailing"]
    assert sorted((r["c"], r["train_step"]) for r in ckpt) == [(8, 2), (8, 4), (16, 2), (16, 4)]
    assert {(r["sampler"], r["steps"], r["guidance"]) for r in ckpt} == {("ddim", 2, 3.0)}
    assert all(r["train_compute"] > 0 for r in ckpt)
    rows = [r for r in rows if r["seed0"] == 0 and r not in ckpt]
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
    run_study(cfg, progress=False, log=lines.append)
    for stage in ("train/c8", "train/c16", "sweep", "confirm", "checkpoints"):
        assert f"[study]   {stage}: complete, reused" in lines
    assert not any("computed" in line or "training c=" in line for line in lines)
    with ResultsStore(cfg.root / "results.sqlite") as store:
        assert len(store.rows()) == 16 + 8 + 4

    # A new grid point after training reuses the autoencoder and the models: only the 8 new
    # cells (2 widths x 2 samplers x 2 steps at w = 2) are computed, and the report and the
    # verdict read this grid's cells only.
    lines.clear()
    wider = cfg.replace(sweep=cfg.sweep.replace(guidance=(1.5, 2.0, 3.0)))
    run_study(wider, progress=False, log=lines.append)
    assert "[study]   autoencoder: complete, reused" in lines
    assert "[study]   train/c16: complete, reused" in lines
    assert "[study]   computed 8 cells (the rest were already stored)" in lines
    lines.clear()
    narrow = run_study(cfg.replace(widths=(8,)), stages=("sweep", "report"), log=lines.append)
    assert "[study]   sweep: complete, reused" in lines
    assert "c=16" not in narrow.verdict and "c = 16" not in narrow.verdict

    # A changed autoencoder is refused before any stage runs, naming the stage, the field and
    # the fix; the folder is left as it was.
    with pytest.raises(StageMismatchError, match=r"'autoencoder'.*autoencoder\.steps: 20 -> 30"):
        run_study(cfg.replace(autoencoder=cfg.autoencoder.replace(steps=30)), log=lines.append)
    with pytest.raises(StageMismatchError, match=r"'train/c8'.*train\.steps: 4 -> 5.*delete"):
        run_study(cfg.replace(train=cfg.train.replace(steps=5)), log=lines.append)


def test_presets_round_trip_and_validate(tmp_path):
    for name in PRESETS:
        cfg = preset(name)
        path = cfg.save(tmp_path / f"{name}.toml")
        assert StudyConfig.load(path) == cfg
    assert len(preset("tiny").widths) >= 3
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("huge")
    with pytest.raises(ConfigError, match="differs from"):
        preset("tiny").replace(resolution=64)


def test_dry_run_prints_plan_and_cost(tmp_path, capsys):
    cfg = micro_study(tmp_path / "s")
    config = cfg.save(tmp_path / "micro.toml")
    assert main(["study", "--config", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"sweep: {len(grid_settings(cfg.sweep)) * len(cfg.widths)} cells" in out
    widths = [line.split() for line in out.splitlines() if line.split()[:1] in (["8"], ["16"])]
    assert len(widths) == 2 and all(len(w) == 9 for w in widths)  # 5 counts + 2 timed columns
    assert "estimated on this machine:" in out and not (tmp_path / "s").exists()
    # The paper preset's plan (one width to keep the test short): 64 x 64 latents, CLIP
    # context, a width too large to time on this machine.
    text = dry_run(preset("paper").replace(widths=(64,)))
    assert "latent 4x64x64; text clip (77 tokens)" in text
    assert text.count("(target)") == 2 and "no full time estimate" in text


def test_cli_runs_every_stage_by_default(monkeypatch, tmp_path):
    """``ldmscale study`` without ``--stages`` runs all of STAGES (confirm, checkpoints and
    floors included); ``--stages`` restricts it."""
    import ldmscale.study as study

    seen: list[tuple[str, ...]] = []

    def fake(cfg, stages=study.STAGES, progress=True, log=print):
        seen.append(tuple(stages))
        return study.StudyResult(tmp_path, tmp_path, tmp_path, [], [], None, None, {})

    monkeypatch.setattr(study, "run_study", fake)
    assert main(["study", "--preset", "tiny", "--out", str(tmp_path / "s")]) == 0
    assert main(["study", "--out", str(tmp_path / "s"), "--stages", "data,train"]) == 0
    assert seen == [study.STAGES, ("data", "train")]
    assert {"confirm", "checkpoints", "floors"} <= set(study.STAGES)


def test_tiny_and_trend_presets_follow_the_protocol():
    tiny, trend = preset("tiny"), preset("trend")
    for cfg in (tiny, trend):
        assert cfg.sweep.timestep_spacings == ("trailing",)
        assert min(cfg.sweep.guidance) == 1.0 and len(cfg.sweep.guidance) >= 5
        assert cfg.train.eval_steps and cfg.train.eval_steps[-1] == cfg.train.steps
    assert tiny.max_objects == 1 and trend.max_objects == 2
    assert trend.sweep.n_images >= 256

    def cost(c: int) -> float:
        spec = UNetSpec(
            c=c,
            context_dim=384,
            context_len=trend.text_encoder.max_length,
            latent_channels=trend.autoencoder.latent_channels,
            latent_size=trend.resolution // trend.autoencoder.downsampling_factor,
            layers_per_block=trend.train.layers_per_block,
            head_dim=trend.train.head_dim,
        )
        return normalized_cost(spec)

    # the issue asks for widths spanning at least 7x in normalized cost
    assert cost(max(trend.widths)) / cost(min(trend.widths)) >= 7.0
