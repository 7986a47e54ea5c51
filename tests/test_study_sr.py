"""The study task ``sr`` (ldmscale.study.task_sr): SR fine-tuning of every width from its
text-to-image model, the SR cells in the one store, the baselines and the report sections."""

from __future__ import annotations

import json

import pytest

from conftest import micro_study

TINY_SR = {
    "steps": 4,
    "batch_size": 8,
    "warmup_steps": 1,
    "keep": [1, 3],
    "n_images": 8,
    "sample_steps": [1, 2, 3, 21, 24, 64],
    "checkpoint_steps": 2,
    "bootstrap": 20,
    "probe_steps": 20,
    "grid_images": 2,
    "grid_steps": 2,
}


def _sr_study(tmp_path):
    from ldmscale.autoencoder import AutoencoderConfig

    ae = AutoencoderConfig(
        resolution=32,
        block_out_channels=(8, 8, 8),
        norm_num_groups=8,
        steps=10,
        val_images=16,
        scale_images=32,
    )
    cfg = micro_study(tmp_path, resolution=32, autoencoder=ae)
    return cfg.replace(tasks=("sr",), task_options={"sr": TINY_SR})


@pytest.mark.slow
def test_the_sr_task_fine_tunes_every_width_and_reports(tmp_path):
    from ldmscale.config import ConfigError
    from ldmscale.modelfolder import read_model_meta
    from ldmscale.store import ResultsStore
    from ldmscale.study import run_study
    from ldmscale.study.stages import default_stages
    from ldmscale.study.task_sr import SRTaskOptions, sr_run_dir

    cfg = _sr_study(tmp_path)
    assert default_stages(cfg) == (
        "data", "autoencoder", "train", "sr_train", "sr_sweep", "sr_baselines", "report"
    )  # fmt: skip
    with pytest.raises(ConfigError, match="keep steps"):
        SRTaskOptions.from_dict({**TINY_SR, "keep": [2, 8]})
    with pytest.raises(ConfigError, match="does not score SR outputs"):
        SRTaskOptions.from_dict({**TINY_SR, "metrics": ["alignment"], "reading_metrics": []})
    result = run_study(cfg, progress=False, log=lambda s: None)
    for c in cfg.widths:
        meta = read_model_meta(sr_run_dir(cfg, c) / "model")
        assert meta.task == "sr" and meta.parent  # grown from the width's t2i model
        assert (sr_run_dir(cfg, c) / "evals" / "step-0000003").is_dir()
    with ResultsStore(cfg.root / "results.sqlite") as store:
        rows = [r for r in store.rows() if "sr" in (r.get("protocol") or {})]
    # 2 widths x 6 step counts (final models) + 2 widths x (2 kept exports + the final model)
    # at 2 steps, less the final models' 2-step cells counted twice.
    assert len(rows) == 2 * 6 + 2 * 3 - 2
    assert all(r["guidance"] == 1.0 and r["metrics"]["psnr"]["n"] == 8 for r in rows)
    # The dry run's plan is what ran: the cells and their per-image UNet evaluations.
    from ldmscale.study import dry_run

    evals = sum(r["n_images"] * r["steps"] for r in rows)
    plan_text = dry_run(cfg, calibrate=False)
    assert f"sr sweep: {len(rows)} cells" in plan_text
    assert f"{evals:,} per-image UNet evaluations" in plan_text
    from ldmscale.frontier import load_rows

    # The frontier's rows leave the SR cells out (this study has no text-to-image sweep).
    assert load_rows(cfg.root / "results.sqlite") == []
    base = json.loads((cfg.root / "sr" / "baselines.json").read_text())["scores"]
    assert set(base) == {"bicubic", "autoencoder"} and "attr_acc" in base["bicubic"]
    page = result.report.read_text()
    assert "Super-resolution" in page
    # c16 costs ~2.7 x c8 per step: c16 x1 pairs with c8 x3 (b), c16 x24 with c8 x64 (c), and
    # c16's step-1 export with c8's step-3 export (a); each reading has paired comparisons.
    for reading in ("(a) At equal fine-tuning", "(b) At equal sampling", "(c) At equal sampling"):
        assert f"{reading}" in page and "no pairs" not in page.split(reading)[1][:120]
    figures = result.report.parent / "figures"
    for name in ("sr_grid.png", "sr_fig4_fd_probe.png", "sr_fig12_attr_acc.png"):
        assert (figures / name).is_file(), name
    # A rerun finds every SR stage done.
    again = run_study(cfg, progress=False, log=lambda s: None)
    assert set(again.timings) >= {"sr_sweep"}
