"""Tests for ldmscale.sweep.run: resumable runs into the store, the serial and Ray executors (with
the synthetic and the real evaluator), store rows, and the ``ldmscale sweep`` CLI.
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

import pytest

import sweep_helpers
from ldmscale.store import ResultsStore
from ldmscale.sweep import (
    SweepConfig,
    SweepError,
    cell_row,
    plan_sweep,
    run_cells,
    run_sweep,
)
from sweep_helpers import bars_evaluate, make_models, small_cfg, synthetic_evaluate

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_sd_dir) -> list[str]:
    return make_models(tmp_path_factory.mktemp("models"), tiny_sd_dir)


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
    cmd += ["--evaluator", "sweep_helpers:synthetic_evaluate"]
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


def real_cfg(model, tiny_shapes, tmp_path, samplers: tuple[str, ...]) -> SweepConfig:
    """A small sweep for the real evaluator: one tiny model, 2 samplers x 2 guidance scales,
    4 images per cell, FD-probe and alignment, stored in ``tmp_path / "serial.sqlite"``."""
    return SweepConfig(
        models=(model,),
        samplers=samplers,
        steps=(2,),
        guidance=(1.0, 3.0),
        n_images=4,
        dataset=str(tiny_shapes),
        resolution=16,
        metrics=("fd_probe", "alignment"),
        bootstrap=20,
        batch_size=4,
        probe_steps=20,
        store=str(tmp_path / "serial.sqlite"),
    )


@pytest.fixture(scope="session")
def ray_local():
    ray = pytest.importorskip("ray")
    from ldmscale.sweep import ensure_ray

    ensure_ray(num_cpus=2)
    # Ship this module's functions by value: Ray workers cannot import the tests folder.
    ray.cloudpickle.register_pickle_by_value(sweep_helpers)
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


@pytest.mark.slow
def test_ray_executor_runs_the_real_evaluator_like_serial(models, tmp_path, tiny_shapes, ray_local):
    """A small real sweep (a tiny model folder in the trainer's format, real sampling, FD-probe
    and text alignment with bootstrap CIs) on the local 2-CPU Ray instance stores the same rows
    as the serial executor, and the driver itself samples nothing."""
    from ldmscale.sweep import evaluate

    cfg = real_cfg(models[0], tiny_shapes, tmp_path, ("ddim", "dpmpp"))
    with ResultsStore(cfg.store) as s:
        run_sweep(cfg, s, progress=False)  # the built-in evaluator, in this process
        serial = {r["cell_id"]: r for r in s.rows()}
    evaluate._MODELS.clear()
    ray_cfg = cfg.replace(executor="ray", store=str(tmp_path / "ray.sqlite"))
    with ResultsStore(ray_cfg.store) as s:
        summary = run_sweep(ray_cfg, s, progress=False)
        distributed = {r["cell_id"]: r for r in s.rows()}
    assert not evaluate._MODELS  # the cells were sampled in the Ray workers
    assert summary.computed == len(serial) == 4 and distributed.keys() == serial.keys()
    for cid, row in serial.items():
        other = distributed[cid]
        assert other["metrics"] == row["metrics"]  # values, CIs and n, exactly
        for key in ("nfe", "flops", "norm_cost", "sampling_cost"):
            assert other[key] == row[key], key
        networks = row["provenance"]["extra"]["feature_networks"]
        assert other["provenance"]["extra"]["feature_networks"] == networks
        fd, align = row["metrics"]["fd_probe"], row["metrics"]["alignment"]
        assert math.isfinite(fd["value"]) and fd["lo"] <= fd["value"] <= fd["hi"]
        assert 0.0 <= align["lo"] <= align["hi"] <= 1.0 and fd["n"] == align["n"] == 4
    assert len({r["metrics"]["fd_probe"]["value"] for r in serial.values()}) == 4


@pytest.mark.slow
def test_processes_executor_runs_the_real_evaluator_like_serial(models, tmp_path, tiny_shapes):
    """Two spawned one-thread worker processes store the same rows as the serial executor
    (the tests run torch with one thread), and the driver samples nothing."""
    from ldmscale.sweep import evaluate

    cfg = real_cfg(models[0], tiny_shapes, tmp_path, ("ddim", "ddpm"))
    with ResultsStore(cfg.store) as s:
        run_sweep(cfg, s, progress=False)
        serial = {r["cell_id"]: r for r in s.rows()}
    evaluate._MODELS.clear()
    par = cfg.replace(executor="processes", num_cpus=2, store=str(tmp_path / "par.sqlite"))
    with ResultsStore(par.store) as s:
        summary = run_sweep(par, s, progress=False)
        parallel = {r["cell_id"]: r for r in s.rows()}
    assert not evaluate._MODELS  # sampled in the workers
    assert summary.computed == len(serial) == 4 and parallel.keys() == serial.keys()
    for cid, row in serial.items():
        assert parallel[cid]["metrics"] == row["metrics"]
        assert parallel[cid]["flops"] == row["flops"]


def test_processes_workers_follow_the_drivers_progress_bar_switch(models, tmp_path):
    """Spawned workers start with bars on; ``study --no-progress`` (``progress_bars(False)``
    in the driver) reaches them, and the control without it leaves them on."""
    from ldmscale.progress import progress_bars

    cfg = small_cfg(models[:1], tmp_path, samplers=("ddim",), steps=(4,), guidance=(1.5, 3.0))
    cfg = cfg.replace(executor="processes", num_cpus=2)
    seen = {}
    for bars in (True, False):
        store = str(tmp_path / f"bars_{bars}.sqlite")
        with progress_bars(bars), ResultsStore(store) as s:
            run_sweep(cfg.replace(store=store), s, bars_evaluate, progress=False)
            seen[bars] = {r["provenance"]["extra"]["bars"] for r in s.rows()}
    assert seen == {True: {True}, False: {False}}


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
    # the built-in evaluator scores registered metrics only: a typo fails before any work
    assert main(["sweep", "--config", str(path), "--metrics", "fid_50", "--dry-run"]) == 2
    assert "unknown metric 'fid_50'; known metrics" in capsys.readouterr().err


def test_cli_run_adaptive_and_export(models, tmp_path, capsys):
    from ldmscale.cli import main

    cfg = small_cfg(models, tmp_path, samplers=("ddim",), steps=(4,))
    path = cfg.save(tmp_path / "sweep.json")
    ev = ["--evaluator", "sweep_helpers:synthetic_evaluate", "--no-progress"]
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


def test_cli_spacing_seed0_and_cells(models, tmp_path, capsys):
    from ldmscale.cli import main

    cfg = small_cfg(models, tmp_path, samplers=("ddim",), steps=(4,))
    path = cfg.save(tmp_path / "sweep.json")
    ev = ["--evaluator", "sweep_helpers:synthetic_evaluate", "--no-progress"]
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
