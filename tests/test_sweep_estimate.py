"""Tests for ldmscale.sweep.estimate: dry-run counts and the calibrated time estimate."""

from __future__ import annotations

import pytest

from ldmscale.store import ResultsStore
from ldmscale.sweep import (
    describe_model,
    estimate_plan,
    format_estimate,
    plan_sweep,
    run_cells,
)
from sweep_helpers import make_models, small_cfg, synthetic_evaluate


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_sd_dir) -> list[str]:
    return make_models(tmp_path_factory.mktemp("models"), tiny_sd_dir)


def test_estimate_plan_counts_and_uses_calibration(models, tmp_path):
    cfg = small_cfg(models, tmp_path, batch_size=8)
    plan = plan_sweep(cfg)
    calls = []

    def fake_calibrate(model, batch_size, repeats):
        calls.append((model.name, batch_size))
        return {"unet_s": 0.01 * model.c, "unet_cfg_s": 0.02 * model.c, "vae_s": 0.5}

    est = estimate_plan(plan, calibrator=fake_calibrate)
    assert sorted(calls) == [("c16", 8), ("c8", 8)]  # once per model, at the sweep's batch size
    assert est.cells == est.pending == 30
    assert est.unet_evals == plan.unet_evals
    # 2 batches of 8 per cell, every cell with CFG; plus metric seconds
    expected = sum(2 * (c.steps * 0.02 * c.model.c + 0.5) for c in plan.cells)
    assert est.seconds == pytest.approx(expected + est.metric_seconds)
    text = format_estimate(est, 8)
    assert "cells: 30" in text and f"{plan.unet_evals:,}" in text and "DPM-Solver++" in text
    # cells already stored are not counted as pending
    with ResultsStore(cfg.store) as store:
        run_cells(plan.cells[:5], store, synthetic_evaluate, progress=False)
        assert estimate_plan(plan, store, calibrate=False).pending == 25


def test_calibrate_model_times_a_real_unet(models):
    from ldmscale.sweep import calibrate_model

    t = calibrate_model(describe_model(models[0]), batch_size=2, repeats=1)
    assert 0 < t["unet_s"] < 30 and 0 < t["unet_cfg_s"] < 30
    assert 0 < t["vae_s"] < 30
