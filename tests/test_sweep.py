"""Tests for ldmscale.sweep (planning, resumable runs, Ray executor, dry-run estimate),
ldmscale.adaptive (guidance search) and the ``ldmscale sweep`` CLI.

The engine is tested with ``synthetic_evaluate``: a deterministic evaluator with real
arithmetic (an FD-like curve over guidance, unimodal in log w, with a small-N bias and
seeded noise that shrinks as 1/sqrt(N)). It is importable as ``test_sweep:synthetic_evaluate``
so that subprocesses (the kill-and-resume test) and Ray workers can run it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import make_tiny_ldmscale_model, tiny_unet_spec
from ldmscale.adaptive import (
    AdaptiveConfig,
    GroupSearch,
    adaptive_search,
    paired_worse,
    search_guidance,
    synthetic_rows,
)
from ldmscale.config import ConfigError
from ldmscale.family import build_unet
from ldmscale.store import ResultsStore
from ldmscale.sweep import (
    Cell,
    CellResult,
    SweepConfig,
    SweepError,
    cell_row,
    describe_model,
    estimate_plan,
    format_estimate,
    plan_sweep,
    run_cells,
    run_sweep,
)

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ("a red circle", "a blue square at the top", "a small green triangle", "two shapes")


# --------------------------------------------------------------------------------------
# Helpers: fake model folders and the deterministic evaluator
# --------------------------------------------------------------------------------------


def true_optimum(c: int, steps: int) -> float:
    """The synthetic curve's best guidance: grows with model width, shrinks with steps."""
    return 2.0 + c / 8.0 + 8.0 / steps


def synthetic_evaluate(cell: Cell) -> CellResult:
    """Deterministic FD-like and alignment-like scores for a cell (seeded by its cell_id)."""
    log = os.environ.get("LDMSCALE_TEST_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"{os.environ.get('LDMSCALE_TEST_RUN', '')} {cell.cell_id}\n")
            f.flush()
    delay = float(os.environ.get("LDMSCALE_TEST_DELAY", "0"))
    if delay:
        time.sleep(delay)
    rng = np.random.default_rng(int(cell.cell_id[:12], 16))
    n, c, g = cell.n_images, cell.model.c, cell.guidance
    sd = 2.0 / math.sqrt(n)
    fd = (
        20
        + 80 / c
        + 30 / cell.steps
        + 6 * (math.log(g) - math.log(true_optimum(c, cell.steps))) ** 2
    )
    fd += 16.0 / n + sd * rng.normal()
    align = 0.2 + 0.05 * math.log(g) + 0.01 * rng.normal() / math.sqrt(n)
    cfg_factor = 2 if cell.cfg else 1
    return CellResult(
        metrics={
            "fd_probe": {"value": fd, "lo": fd - 1.96 * sd, "hi": fd + 1.96 * sd, "n": n},
            "alignment": {"value": align, "lo": align - 0.01, "hi": align + 0.01, "n": n},
        },
        nfe=float(cell.steps),
        flops=1e9 * (cell.model.norm_cost or 1.0) * cell.steps * cfg_factor,
        wall_s=0.001,
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_sd_dir) -> list[str]:
    root = tmp_path_factory.mktemp("models")
    return [str(make_tiny_ldmscale_model(root, tiny_sd_dir, f"c{c}", c, c / 320)) for c in (8, 16)]


def small_cfg(models, tmp_path, **over) -> SweepConfig:
    kw = dict(
        models=tuple(models),
        samplers=("ddim", "dpmpp"),
        steps=(4, 8, 32),
        guidance=(1.5, 3.0, 6.0),
        n_images=16,
        prompts=PROMPTS,
        store=str(tmp_path / "results.sqlite"),
        bootstrap=10,
    )
    kw.update(over)
    return SweepConfig(**kw)


# --------------------------------------------------------------------------------------
# Models, cells and plans
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# Running: rows, provenance, resume
# --------------------------------------------------------------------------------------


def test_run_sweep_writes_rows_with_provenance_and_resumes(models, tmp_path):
    cfg = small_cfg(models, tmp_path)
    plan = plan_sweep(cfg)
    with ResultsStore(cfg.store) as store:
        first = run_cells(plan.cells[:7], store, synthetic_evaluate, progress=False)
        assert (first.computed, first.skipped) == (7, 0)
        summary = run_sweep(cfg, store, synthetic_evaluate, progress=False)
        assert summary.planned == 30 and summary.skipped == 7 and summary.computed == 23
        again = run_sweep(cfg, store, synthetic_evaluate, progress=False)
        assert again.computed == 0 and again.skipped == 30
        rows = store.rows()
    assert len(rows) == 30
    assert {r["cell_id"] for r in rows} == {c.cell_id for c in plan.cells}
    row = next(
        r for r in rows if r["model"] == "c16" and r["sampler"] == "ddim" and r["steps"] == 8
    )
    assert row["sampling_cost"] == pytest.approx(16 / 320 * 8)
    assert row["nfe"] == 8.0 and row["c"] == 16 and row["n_images"] == 16
    assert row["flops"] == pytest.approx(1e9 * 16 / 320 * 8 * 2)
    assert set(row["metrics"]) == {"fd_probe", "alignment"}
    prov = row["provenance"]
    assert prov["seeds"] == list(range(16))
    assert prov["sampler_config"] == {"name": "ddim", "steps": 8, "guidance": row["guidance"]}
    assert prov["model_config"]["unet_spec"]["c"] == 16
    assert prov["code_version"].startswith("0.")
    assert prov["prompts_hash"] and prov["created_at"]
    assert row["protocol"]["metrics"] == ["alignment", "fd_probe"]


def test_evaluator_failure_keeps_finished_cells(models, tmp_path):
    cfg = small_cfg(models, tmp_path)
    plan = plan_sweep(cfg)
    calls = []

    def flaky(cell):
        calls.append(cell.cell_id)
        if len(calls) == 4:
            raise RuntimeError("out of memory")
        return synthetic_evaluate(cell)

    with ResultsStore(cfg.store) as store:
        with pytest.raises(SweepError, match="failed: out of memory"):
            run_cells(plan.cells, store, flaky, progress=False)
        assert len(store) == 3
        done = run_cells(plan.cells, store, synthetic_evaluate, progress=False)
        assert done.skipped == 3 and done.computed == 27


def _count_rows(path: Path) -> int:
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT COUNT(*) FROM cells").fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:
        return 0


@pytest.mark.slow
def test_sigkill_mid_sweep_then_resume(models, tmp_path):
    """Kill -9 a running ``ldmscale sweep``; the rerun computes only the missing cells."""
    cfg = small_cfg(models, tmp_path)
    cfg_path = cfg.save(tmp_path / "sweep.json")
    store_path = Path(cfg.store)
    log = tmp_path / "evals.log"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    env.update(LDMSCALE_TEST_LOG=str(log), LDMSCALE_TEST_DELAY="0.1", LDMSCALE_TEST_RUN="1")
    cmd = [sys.executable, "-m", "ldmscale", "sweep", "--config", str(cfg_path), "--no-progress"]
    cmd += ["--evaluator", "test_sweep:synthetic_evaluate"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while _count_rows(store_path) < 6:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "sweep made no progress"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    with ResultsStore(store_path) as store:
        before = {r["cell_id"]: r for r in store.rows()}
    assert 6 <= len(before) < 30

    env.update(LDMSCALE_TEST_DELAY="0", LDMSCALE_TEST_RUN="2")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["already_stored"] == len(before)
    assert summary["computed"] == 30 - len(before)

    with ResultsStore(store_path) as store:
        after = store.rows()
    ids = [r["cell_id"] for r in after]
    assert len(ids) == len(set(ids)) == 30
    assert set(ids) == {c.cell_id for c in plan_sweep(cfg).cells}
    for r in after:  # completed rows untouched
        if r["cell_id"] in before:
            assert r == before[r["cell_id"]]
    second_run = [line.split()[1] for line in log.read_text().splitlines() if line.startswith("2 ")]
    assert len(second_run) == 30 - len(before)
    assert set(second_run).isdisjoint(before)


# --------------------------------------------------------------------------------------
# Ray executor
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ray_local():
    ray = pytest.importorskip("ray")
    from ldmscale.sweep import ensure_ray

    ensure_ray(num_cpus=2)
    # Ship this module's functions by value: Ray workers cannot import the tests folder.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_executor_matches_serial(models, tmp_path, ray_local):
    cfg = small_cfg(models, tmp_path, steps=(4, 8), samplers=("ddim",))
    with ResultsStore(tmp_path / "serial.sqlite") as s:
        run_sweep(cfg, s, synthetic_evaluate, progress=False)
        serial = {r["cell_id"]: r for r in s.rows()}
    with ResultsStore(tmp_path / "ray.sqlite") as s:
        summary = run_sweep(cfg.replace(executor="ray"), s, synthetic_evaluate, progress=False)
        distributed = {r["cell_id"]: r for r in s.rows()}
    assert summary.computed == len(serial) == 12
    assert distributed.keys() == serial.keys()
    for cid, row in serial.items():
        assert distributed[cid]["metrics"] == row["metrics"]
        assert distributed[cid]["flops"] == row["flops"]


# --------------------------------------------------------------------------------------
# Dry run
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# Adaptive guidance search
# --------------------------------------------------------------------------------------

GRID = [1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]


def test_paired_worse_drops_only_clear_losers():
    rng = np.random.default_rng(0)
    shared = rng.normal(0, 5, 64)  # an image effect common to all scales: cancels when paired
    rows = [shared + rng.normal(0, 0.1, 64) + d for d in (0.0, 0.02, 1.0)]
    worse = paired_worse(rows, np.mean, leader=0, alpha=0.2, n_boot=100)
    assert worse == [False, False, True]  # the leader is never dropped; a near-tie stays
    # unpaired, the same 1.0 gap would drown in the shared effect; paired it is clear
    assert paired_worse(rows, np.mean, leader=0, alpha=0.0, n_boot=100) == [False] * 3


def test_race_is_exact_and_cheap_on_noiseless_curves():
    for g_star in GRID:
        rows = {g: np.full(256, (math.log(g) - math.log(g_star)) ** 2) for g in GRID}
        s = search_guidance(GRID, lambda g, n, rows=rows: rows[g][:n], np.mean, 256)
        assert s.choice == min(GRID, key=lambda g, gs=g_star: abs(math.log(g / gs)))
        # round 0: 8 scales x 32 images; every loser dropped; the winner grown to 256
        assert s.images == 8 * 32 + (256 - 32)
        assert s.trace[-1]["n"] == 256


def test_race_on_a_flat_curve_ends_as_a_smaller_grid_within_budget():
    rng = np.random.default_rng(1)
    rows = {g: rng.normal(0, 1, 256) for g in GRID}  # no signal: nothing can be dropped
    s = search_guidance(GRID, lambda g, n: rows[g][:n], np.mean, 256, AdaptiveConfig(alpha=0.0))
    assert s.images <= 0.4 * 8 * 256
    assert len(s.trace[-1]["guidance"]) == 8 and 32 < s.trace[-1]["n"] < 256


def synthetic_groups(noise: float, groups: int, n_images: int = 256, seed: int = 0):
    """Adaptive vs full grid on seeded noisy unimodal curves (``synthetic_rows``): the grid
    and the race see the same images, as in a real sweep. Returns (within one step of the
    grid's optimum, images / grid)."""
    rng = np.random.default_rng(seed)
    within = spent = 0
    for _ in range(groups):
        rows, _ = synthetic_rows(GRID, n_images, noise, rng=rng)
        full = int(np.argmin([rows[g].mean() for g in GRID]))
        s = search_guidance(GRID, lambda g, n, rows=rows: rows[g][:n], np.mean, n_images)
        within += abs(GRID.index(s.choice) - full) <= 1
        spent += s.images
    return within / groups, spent / (groups * len(GRID) * n_images)


def test_adaptive_meets_targets_on_synthetic_curves():
    within, fraction = synthetic_groups(noise=0.5, groups=100)
    assert within >= 0.90
    assert fraction <= 0.40
    # and it degrades gracefully: very noisy curves still mostly land near the grid's pick
    within_noisy, _ = synthetic_groups(noise=1.5, groups=100, seed=1)
    assert 0.5 < within_noisy < within


def test_group_search_protocol_and_errors():
    s = GroupSearch(GRID[::-1], 64)
    assert s.grid == GRID and not s.done
    assert s.requests() == [(g, 8) for g in GRID]
    with pytest.raises(SweepError, match="expected 8 scores"):
        s.tell([1.0])
    with pytest.raises(SweepError, match="not finished"):
        _ = s.choice
    s.tell([3, 1, 2, 4, 5, 6, 7, 8], [False, False, False] + [True] * 5)
    assert s.requests() == [(1.5, 16), (2.0, 16), (3.0, 16)]  # the survivors, doubled
    assert s.images == 8 * 8 and s.trace[0]["dropped"] == GRID[3:]
    with pytest.raises(ConfigError, match="alpha"):
        AdaptiveConfig(alpha=0.7)


def test_adaptive_search_writes_store_and_finds_optima(models, tmp_path):
    cfg = small_cfg(
        models, tmp_path, guidance=tuple(GRID), n_images=64, samplers=("ddim",), steps=(4, 16)
    )
    with ResultsStore(cfg.store) as store:
        res = adaptive_search(cfg, store, synthetic_evaluate, AdaptiveConfig(), progress=False)
        rows = store.rows()
        assert res.computed == len(rows)
        assert min(r["n_images"] for r in rows) == 8 and max(r["n_images"] for r in rows) <= 64
        assert res.grid_images == 4 * 8 * 64 and res.fraction <= 0.4
        assert res.images == sum(ch["images"] for ch in res.choices)
        for ch in res.choices:
            c = 8 if ch["model"] == "c8" else 16
            truth = min(
                GRID, key=lambda g, c=c, ch=ch: abs(math.log(g / true_optimum(c, ch["steps"])))
            )
            assert abs(GRID.index(ch["guidance"]) - GRID.index(truth)) <= 1
            assert ch["metric"] == "fd_probe" and ch["trace"][0]["n"] == 8
            # the chosen value is the stored cell of the last round
            last = [
                r
                for r in rows
                if r["n_images"] == ch["n_images"]
                and r["guidance"] == ch["guidance"]
                and r["model"] == ch["model"]
                and r["steps"] == ch["steps"]
            ]
            assert len(last) == 1 and last[0]["metrics"]["fd_probe"]["value"] == ch["value"]
        # the synthetic curves are sharp enough that some scales are dropped on their CIs
        assert any(t["dropped"] for ch in res.choices for t in ch["trace"])
        # rerun: everything is in the store, nothing recomputed, same choices
        again = adaptive_search(cfg, store, synthetic_evaluate, progress=False)
        assert again.computed == 0
        assert [c["guidance"] for c in again.choices] == [c["guidance"] for c in res.choices]
        # a higher-is-better metric is maximized
        best_align = adaptive_search(
            cfg, store, synthetic_evaluate, AdaptiveConfig(metric="alignment"), progress=False
        )
        assert all(c["guidance"] >= 7.0 for c in best_align.choices)
        with pytest.raises(SweepError, match="not among"):
            adaptive_search(
                cfg, store, synthetic_evaluate, AdaptiveConfig(metric="fid"), progress=False
            )


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def test_cli_dry_run_and_overrides(models, tmp_path, capsys, monkeypatch):
    from ldmscale.cli import main

    cfg = small_cfg(models, tmp_path)
    path = cfg.save(tmp_path / "sweep.toml")
    rc = main(
        [
            "sweep",
            "--config",
            str(path),
            "--dry-run",
            "--no-calibrate",
            "--steps",
            "4,8",
            "--guidance",
            "2,3",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "cells: 16" in out  # 2 models x 2 samplers x 2 steps x 2 guidance
    assert f"{sum(16 * s * 2 for s in (4, 8)) * 2 * 2 * 2:,}" in out
    assert main(["sweep", "--config", str(path), "--samplers", "euler", "--dry-run"]) == 2
    assert "samplers" in capsys.readouterr().err


def test_cli_run_adaptive_and_export(models, tmp_path, capsys):
    from ldmscale.cli import main

    cfg = small_cfg(models, tmp_path, samplers=("ddim",), steps=(4,))
    path = cfg.save(tmp_path / "sweep.json")
    ev = ["--evaluator", f"{__name__}:synthetic_evaluate", "--no-progress"]
    assert main(["sweep", "--config", str(path), *ev]) == 0
    assert json.loads(capsys.readouterr().out)["computed"] == 6
    assert main(["sweep", "--config", str(path), "--adaptive", "--guidance", "1.5,2,3,4", *ev]) == 0
    out = capsys.readouterr().out
    assert "best w=" in out and "% of the grid" in out
    csv_path, pq_path = tmp_path / "r.csv", tmp_path / "r.parquet"
    assert main(["sweep", "export", "--store", cfg.store, "--csv", str(csv_path)]) == 0
    n_rows = len(ResultsStore(cfg.store).rows())
    assert f"wrote {n_rows} rows" in capsys.readouterr().out
    assert len(csv_path.read_text().splitlines()) == n_rows + 1
    assert main(["sweep", "export", "--store", cfg.store, "--parquet", str(pq_path)]) == 0
    assert pq_path.stat().st_size > 0
    assert (
        main(["sweep", "export", "--store", str(tmp_path / "none.sqlite"), "--csv", "x.csv"]) == 2
    )


def test_cell_row_takes_norm_cost_from_result_when_model_lacks_it(models, tmp_path):

    cell = plan_sweep(small_cfg(models, tmp_path)).cells[0]
    cell = dataclasses.replace(cell, model=dataclasses.replace(cell.model, norm_cost=None))
    result = synthetic_evaluate(cell)
    result.norm_cost = 0.5
    row = cell_row(cell, result)
    assert row["norm_cost"] == 0.5 and row["sampling_cost"] == 0.5 * cell.steps


# --------------------------------------------------------------------------------------
# The real evaluator: a tiny diffusers SD folder, sampled and scored on tiny shapes
# --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_evaluate_cell_samples_and_scores_for_real(tmp_path, tiny_shapes, tiny_sd_dir, monkeypatch):
    monkeypatch.setenv("LDMSCALE_CACHE", str(tmp_path / "cache"))
    from ldmscale.sweep import evaluate_cell

    cfg = SweepConfig(
        models=(str(tiny_sd_dir),),
        samplers=("ddim",),
        steps=(2,),
        guidance=(1.0, 3.0),
        n_images=4,
        dataset=str(tiny_shapes),
        resolution=16,
        metrics=("fd_probe", "alignment"),
        bootstrap=10,
        batch_size=4,
        store=str(tmp_path / "r.sqlite"),
    )
    with ResultsStore(cfg.store) as store:
        summary = run_sweep(cfg, store, progress=False)  # the built-in evaluator
        rows = store.rows()
    assert summary.computed == len(rows) == 2
    for row in rows:
        assert row["nfe"] == 2 and row["flops"] > 0
        assert row["norm_cost"] > 0 and row["sampling_cost"] == pytest.approx(2 * row["norm_cost"])
        fd, align = row["metrics"]["fd_probe"], row["metrics"]["alignment"]
        assert math.isfinite(fd["value"]) and fd["value"] >= 0 and fd["lo"] <= fd["hi"]
        assert 0.0 <= align["lo"] <= align["hi"] <= 1.0 and fd["n"] == 4
        assert row["provenance"]["extra"]["feature_networks"]["fd_probe"].startswith("probe:")
    # CFG doubles the FLOPs of a cell (w = 3) relative to no guidance (w = 1)
    by_w = {(r["sampler"], r["guidance"]): r for r in rows}
    assert by_w[("ddim", 3.0)]["flops"] == pytest.approx(2 * by_w[("ddim", 1.0)]["flops"])
    # per-image seeds: the same cell at another batch size gives the same scores
    cell = next(c for c in plan_sweep(cfg).cells if c.sampler == "ddim" and c.guidance == 3.0)
    again = evaluate_cell(Cell(**{**cell.__dict__, "batch_size": 2}))
    stored = by_w[("ddim", 3.0)]["metrics"]
    assert again.metrics["alignment"]["value"] == stored["alignment"]["value"]
    assert again.metrics["fd_probe"]["value"] == pytest.approx(
        stored["fd_probe"]["value"], rel=1e-3
    )
    # the row cache: a 4-image cell after a 2-image one samples only images 2 and 3, and scores
    # like the uncached cell; a second 4-image evaluation samples nothing
    rows_dir = str(tmp_path / "rows")
    cached = dataclasses.replace(cell, rows_dir=rows_dir)
    half = plan_sweep(cfg).context.cell(cell.model, "ddim", 2, 3.0, 2)
    first = evaluate_cell(dataclasses.replace(half, rows_dir=rows_dir))
    assert first.extra["reused_images"] == 0 and first.metrics["fd_probe"]["n"] == 2
    grown = evaluate_cell(cached)
    assert grown.extra["reused_images"] == 2 and grown.metrics["fd_probe"]["n"] == 4
    assert grown.metrics["alignment"]["value"] == stored["alignment"]["value"]
    assert grown.metrics["fd_probe"]["value"] == pytest.approx(
        stored["fd_probe"]["value"], rel=1e-3
    )
    assert grown.flops == pytest.approx(by_w[("ddim", 3.0)]["flops"])

    def no_sampling(*args, **kwargs):
        raise AssertionError("a fully cached cell must not sample")

    monkeypatch.setattr("ldmscale.sampling.generate", no_sampling)
    repeat = evaluate_cell(cached)
    assert repeat.extra["reused_images"] == 4
    assert repeat.metrics["fd_probe"]["value"] == grown.metrics["fd_probe"]["value"]
    assert repeat.nfe == grown.nfe and repeat.norm_cost == grown.norm_cost
    monkeypatch.undo()

    # the adaptive race with the real evaluator: its first-round cells (8 images) are already
    # stored by a plain sweep without a row cache; the race rescores them for their rows
    race_cfg = cfg.replace(
        guidance=(1.0, 3.0), n_images=16, store=str(tmp_path / "race.sqlite"), bootstrap=0
    )
    with ResultsStore(race_cfg.store) as store:
        run_sweep(race_cfg.replace(n_images=8), store, progress=False)
        res = adaptive_search(race_cfg, store, adaptive=AdaptiveConfig(n_boot=10), progress=False)
    assert res.choices[0]["guidance"] in (1.0, 3.0) and res.choices[0]["trace"][0]["n"] == 8
    evaluated = sum(len(t["guidance"]) for t in res.choices[0]["trace"])
    assert res.computed == evaluated - 2  # round 0 came from the store, not recomputed
    race_rows = Path(race_cfg.store + ".rows")
    assert len(list(race_rows.glob("*.npz"))) == 2  # both scales' images are in the cache


def test_sweep_with_clip_score(tmp_path, tiny_sd_dir, tiny_clip_model_dir):
    """clip_score end to end: sample a tiny SD folder, score with a local CLIP, store a CI."""
    from ldmscale.metrics.clip_score import clip_score
    from ldmscale.model import load_model
    from ldmscale.sampling import SamplerConfig, generate
    from ldmscale.sweep import compute_metrics

    cfg = SweepConfig(
        models=(str(tiny_sd_dir),),
        samplers=("ddim",),
        steps=(2,),
        guidance=(1.0, 3.0),
        n_images=4,
        prompts=PROMPTS,
        metrics=("clip_score",),
        clip_model=str(tiny_clip_model_dir),
        bootstrap=20,
        batch_size=4,
        store=str(tmp_path / "r.sqlite"),
    )
    with ResultsStore(cfg.store) as store:
        summary = run_sweep(cfg, store, progress=False)
        rows = store.rows()
    assert summary.computed == len(rows) == 2
    for row in rows:
        score = row["metrics"]["clip_score"]
        assert -1.0 <= score["lo"] < score["hi"] <= 1.0 and score["n"] == 4
        assert score["lo"] <= score["value"] <= score["hi"]
        networks = row["provenance"]["extra"]["feature_networks"]
        assert networks["clip_score"] == str(tiny_clip_model_dir)
    # the stored value is the mean raw cosine of the cell's own images and prompts
    row = next(r for r in rows if r["guidance"] == 3.0)
    images = generate(
        load_model(tiny_sd_dir), list(PROMPTS), [0, 1, 2, 3], SamplerConfig("ddim", 2, 3.0),
        batch_size=4, progress=False,
    ).images  # fmt: skip
    expected = clip_score(images, list(PROMPTS), tiny_clip_model_dir).mean
    assert row["metrics"]["clip_score"]["value"] == pytest.approx(expected, abs=1e-5)

    # no clip_model: a clear error before any cell is sampled, and from compute_metrics too
    missing = cfg.replace(clip_model=None, store=str(tmp_path / "missing.sqlite"))
    with pytest.raises(SweepError, match="clip_score metric needs a CLIP model.*clip_model"):
        run_sweep(missing, progress=False)
    with ResultsStore(missing.store) as store:
        assert store.rows() == []
    with pytest.raises(SweepError, match="set `clip_model`"):
        compute_metrics(images, list(PROMPTS), {"metrics": ["clip_score"], "bootstrap": 0})
    not_clip = cfg.replace(clip_model=str(tmp_path), store=str(tmp_path / "bad.sqlite"))
    with pytest.raises(SweepError, match="not a CLIP model folder"):
        run_sweep(not_clip, progress=False)


def test_fast_frechet_matches_the_metrics_module():
    from ldmscale.metrics.frechet import frechet_distance_features
    from ldmscale.sweep import fast_frechet

    rng = np.random.default_rng(0)
    ref = rng.normal(size=(200, 16)) @ rng.normal(size=(16, 16))
    gen = rng.normal(0.3, 1.2, size=(50, 16)) @ rng.normal(size=(16, 16))
    stats_mean, stats_cov = ref.mean(0), np.cov(ref, rowvar=False)
    fast = fast_frechet(stats_mean, stats_cov)(gen)
    assert fast == pytest.approx(frechet_distance_features(gen, ref), rel=1e-6)
    assert fast_frechet(stats_mean, stats_cov)(ref) == pytest.approx(0.0, abs=1e-6)
    # fewer images than dimensions (the n x n Gram path): still the same distance
    few = rng.normal(0.3, 1.2, size=(9, 16)) @ rng.normal(size=(16, 16))
    assert fast_frechet(stats_mean, stats_cov)(few) == pytest.approx(
        frechet_distance_features(few, ref), rel=1e-6
    )


# --------------------------------------------------------------------------------------
# Protocol: timestep spacing, seed sets, explicit cell lists, checkpoint rows, cell rows
# --------------------------------------------------------------------------------------

#: A cell and row-cache family computed by the code of 4f38506, before spacing and seed sets
#: were part of a cell: a ``leading`` cell on seed set 0 must keep these ids.
OLD_PROTOCOL = {
    "metrics": ["alignment", "fd_probe"],
    "bootstrap": 10,
    "ci_level": 0.95,
    "reference": {"dataset": "d", "split": "validation", "resolution": 32, "fingerprint": "fp"},
    "prompts": {"source": "config", "cycled": False, "available": 4},
    "probe": {"steps": 600},
    "clip_model": None,
}
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


@pytest.fixture
def fake_sampling(monkeypatch):
    """The real :func:`evaluate_cell` with sampling and scoring replaced by arithmetic: image
    ``i`` "is" its seed, and its alignment row is ``seed + 1000 * guidance``. Records every
    SamplerConfig and the seeds sampled with it."""
    import types

    calls: list[tuple] = []

    def generate(model, prompts, seeds, cfg, batch_size=16, progress=False):
        calls.append((cfg, list(seeds)))
        images = np.zeros((len(seeds), 2, 2, 3), np.float64)
        images[:, 0, 0, 0] = np.asarray(seeds) + 1000 * cfg.guidance
        return types.SimpleNamespace(
            images=images, nfe=cfg.steps, flops=2.0 * len(seeds), sampling_cost=0.1 * cfg.steps
        )

    def metric_rows(images, prompts, protocol):
        return {"alignment": images[:, 0, 0, 0].astype(np.float64)}, {"alignment": "fake"}

    monkeypatch.setattr("ldmscale.sampling.generate", generate)
    monkeypatch.setattr("ldmscale.sweep.metric_rows", metric_rows)
    monkeypatch.setattr("ldmscale.sweep.prepare_metrics", lambda *a, **k: None)
    monkeypatch.setattr(
        "ldmscale.sweep._load_model_cached", lambda m: types.SimpleNamespace(norm_cost=0.1)
    )
    return calls


def test_evaluate_cell_samples_with_the_cells_spacing(models, tmp_path, fake_sampling):
    from ldmscale.sweep import evaluate_cell

    cfg = small_cfg(models, tmp_path, metrics=("alignment",), steps=(4,), samplers=("ddim",))
    for spacing in ("trailing", "leading", "linspace"):
        cell = plan_sweep(cfg.replace(timestep_spacings=(spacing,))).cells[0]
        evaluate_cell(cell)
        assert fake_sampling[-1][0].timestep_spacing == spacing
        assert fake_sampling[-1][0].steps == 4 and fake_sampling[-1][0].name == "ddim"


def test_seed_sets_have_their_own_rows_and_cell_rows_reads_them(models, tmp_path, fake_sampling):
    from ldmscale.rowcache import family_key
    from ldmscale.sweep import cell_rows, metric_statistic

    rows_dir = tmp_path / "rows"
    cfg = small_cfg(
        models[:1],
        tmp_path,
        metrics=("alignment",),
        samplers=("ddim",),
        steps=(4,),
        guidance=(3.0,),
        n_images=8,
        rows_dir=str(rows_dir),
    )
    fresh = cfg.replace(seed0=10_000)
    # seed0 = 0 keeps the old family key; another seed0 gets its own
    sampler = {"name": "ddim", "steps": 4, "guidance": 3.0}
    assert family_key("h", sampler, OLD_PROTOCOL, 0) == family_key("h", sampler, OLD_PROTOCOL)
    assert family_key("h", sampler, OLD_PROTOCOL, 10_000) != family_key("h", sampler, OLD_PROTOCOL)
    with ResultsStore(cfg.store) as store:
        run_sweep(cfg, store, progress=False)
        run_sweep(fresh, store, progress=False)
        # growing seed set 0 afterwards reuses its 8 images: the fresh set did not replace them
        run_sweep(cfg.replace(n_images=12), store, progress=False)
        rows = store.rows()
    assert [r["seed0"] for r in rows] == [0, 10_000, 0]
    assert [seeds for _, seeds in fake_sampling] == [
        list(range(8)),
        list(range(10_000, 10_008)),
        list(range(8, 12)),
    ]
    assert len(list(rows_dir.glob("*.npz"))) == 2
    assert rows[2]["provenance"]["extra"]["reused_images"] == 8
    for row in rows:
        assert row["provenance"]["rows_dir"] == str(rows_dir.resolve())
        got = cell_rows(row)  # the folder from the row's provenance
        n, s0 = row["n_images"], row["seed0"]
        np.testing.assert_array_equal(got["alignment"], np.arange(s0, s0 + n) + 3000.0)
        value = metric_statistic("alignment", row["protocol"], got["alignment"])
        assert value == pytest.approx(row["metrics"]["alignment"]["value"])
        assert metric_statistic("alignment", row["protocol"])(got["alignment"]) == value
    # the 8-image cell of seed set 0 reads the first 8 of the (now 12-image) family file
    assert len(cell_rows(rows[0], rows_dir)["alignment"]) == 8
    # misses are None, never someone else's images
    assert cell_rows(rows[0], tmp_path / "nowhere") is None
    assert cell_rows({**rows[0], "n_images": 13}) is None
    other_seeds = {**rows[0]["provenance"], "seeds": list(range(1, 9))}
    assert cell_rows({**rows[0], "seed0": None, "provenance": other_seeds}) is None
    other_prompts = {**rows[0]["provenance"], "prompt_keys_hash": "0" * 16}
    assert cell_rows({**rows[0], "provenance": other_prompts}) is None
    no_dir = {k: v for k, v in rows[0]["provenance"].items() if k != "rows_dir"}
    assert cell_rows({**rows[0], "provenance": no_dir}) is None
    assert cell_rows({**rows[0], "provenance": no_dir}, rows_dir) is not None


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


def test_cli_spacing_seed0_and_cells(models, tmp_path, capsys):
    from ldmscale.cli import main

    cfg = small_cfg(models, tmp_path, samplers=("ddim",), steps=(4,))
    path = cfg.save(tmp_path / "sweep.json")
    ev = ["--evaluator", f"{__name__}:synthetic_evaluate", "--no-progress"]
    dry = ["--dry-run", "--no-calibrate"]
    assert (
        main(["sweep", "--config", str(path), "--timestep-spacing", "trailing,leading", *dry]) == 0
    )
    assert "cells: 12" in capsys.readouterr().out  # 2 models x 2 spacings x 3 guidance
    assert main(["sweep", "--config", str(path), "--timestep-spacing", "even", *dry]) == 2
    assert "timestep_spacings" in capsys.readouterr().err
    cells = tmp_path / "cells.json"
    cells.write_text(json.dumps([[models[1], "ddim", 16, 2.5, "trailing"]]))
    assert main(["sweep", "--config", str(path), "--cells", str(cells), "--seed0", "7", *ev]) == 0
    assert json.loads(capsys.readouterr().out)["computed"] == 1
    (row,) = ResultsStore(cfg.store).rows()
    assert (row["model"], row["steps"], row["guidance"]) == ("c16", 16, 2.5)
    assert (row["timestep_spacing"], row["seed0"]) == ("trailing", 7)
    assert row["provenance"]["seeds"] == list(range(7, 23))
    cells.write_text('{"not": "a list"}')
    assert main(["sweep", "--config", str(path), "--cells", str(cells), *ev]) == 2
    assert "JSON list" in capsys.readouterr().err
