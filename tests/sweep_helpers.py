"""Shared helpers of the sweep and adaptive-search tests (not a test module).

The engine is tested with :func:`synthetic_evaluate`: a deterministic evaluator with real
arithmetic (an FD-like curve over guidance, unimodal in log w, with a small-N bias and seeded
noise that shrinks as 1/sqrt(N)). It is importable as ``sweep_helpers:synthetic_evaluate`` so
that subprocesses (the kill-and-resume test) and Ray workers can run it.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np

from conftest import make_tiny_ldmscale_model
from ldmscale.sweep import Cell, CellResult, SweepConfig

#: A metric protocol as the code of 4f38506 wrote it (for cell-id and row-cache-key stability).
OLD_PROTOCOL = {
    "metrics": ["alignment", "fd_probe"],
    "bootstrap": 10,
    "ci_level": 0.95,
    "reference": {"dataset": "d", "split": "validation", "resolution": 32, "fingerprint": "fp"},
    "prompts": {"source": "config", "cycled": False, "available": 4},
    "probe": {"steps": 600},
    "clip_model": None,
}

PROMPTS = ("a red circle", "a blue square at the top", "a small green triangle", "two shapes")


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


def bars_evaluate(cell: Cell) -> CellResult:
    """:func:`synthetic_evaluate`, recording in ``extra["bars"]`` whether the process-wide
    progress-bar switch was on where the cell ran (a worker process, for the executors)."""
    from ldmscale.progress import bars_enabled

    result = synthetic_evaluate(cell)
    result.extra["bars"] = bars_enabled()
    return result


def make_models(root, clip_dir) -> list[str]:
    """Two tiny model folders, c = 8 and c = 16 (normalized cost c / 320), named ``c8``, ``c16``."""
    return [str(make_tiny_ldmscale_model(root, clip_dir, f"c{c}", c, c / 320)) for c in (8, 16)]


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
