"""Sweeps: the grid of (model, sampler, steps, guidance) cells, run resumably into a results store.

A sweep is planned from a :class:`SweepConfig` into :class:`Cell` s (:func:`plan_sweep`: the
grid; :func:`plan_cells`: an explicit list), each cell is evaluated by an evaluator
``evaluate(cell) -> CellResult`` (the built-in :func:`evaluate_cell` samples with per-image
seeds, scores the images and attaches bootstrap CIs) and written to the
:class:`~ldmscale.store.ResultsStore` as soon as it completes, by the driver only; a rerun skips
every cell already stored. Executors: ``serial`` or ``ray``.

Modules, one concept each:

- :mod:`~ldmscale.sweep.config`: :class:`SweepConfig`, :class:`SweepError`;
- :mod:`~ldmscale.sweep.models`: :class:`ModelInfo`, :func:`describe_model` (a model's identity);
- :mod:`~ldmscale.sweep.plan`: :class:`Cell`, :class:`CellResult`, :class:`SweepContext`,
  :class:`Plan`, :func:`plan_sweep`, :func:`plan_cells`, :func:`grid_settings`, prompts and
  the metric protocol;
- :mod:`~ldmscale.sweep.run`: :func:`run_cells` / :func:`run_sweep`, the serial and Ray
  executors, :func:`cell_row` (the store row of a cell);
- :mod:`~ldmscale.sweep.evaluate`: the built-in evaluator :func:`evaluate_cell`, and
  :func:`cell_rows` (a stored cell's per-image rows from the row cache);
- :mod:`~ldmscale.sweep.estimate`: dry-run counts and calibrated time estimates.

The metrics themselves (registry, per-image rows, statistics, bootstrap) live in
:mod:`ldmscale.metrics.registry` and :mod:`ldmscale.metrics.protocol`; their names are
re-exported here for existing callers.

Conventions: guidance ``w`` as in ``eps = u + w (c - u)``, ``w = 1`` is no guidance (and then no
doubled batch). Sampling cost = normalized cost x steps. UNet evaluations of a cell =
images x steps x (2 with CFG, else 1).
"""

from ldmscale.metrics.frechet import fast_frechet
from ldmscale.metrics.protocol import (
    metric_rows,
    metric_statistic,
    prepare_metrics,
    score_rows,
)
from ldmscale.sweep.config import (
    DEFAULT_SPACING,
    EXECUTORS,
    PAPER_GUIDANCE,
    SweepConfig,
    SweepError,
)
from ldmscale.sweep.estimate import (
    Estimate,
    calibrate_model,
    estimate_plan,
    format_estimate,
)
from ldmscale.sweep.evaluate import cell_rows, evaluate_cell
from ldmscale.sweep.models import ModelInfo, describe_model
from ldmscale.sweep.plan import (
    Cell,
    CellResult,
    Evaluator,
    Plan,
    Setting,
    SweepContext,
    grid_settings,
    load_prompts,
    metric_protocol,
    plan_cells,
    plan_sweep,
    resolve,
    sampler_identity,
)
from ldmscale.sweep.run import Prepare, RunSummary, cell_row, ensure_ray, run_cells, run_sweep

__all__ = [
    "DEFAULT_SPACING",
    "EXECUTORS",
    "PAPER_GUIDANCE",
    "Cell",
    "CellResult",
    "Estimate",
    "Evaluator",
    "ModelInfo",
    "Plan",
    "Prepare",
    "RunSummary",
    "Setting",
    "SweepConfig",
    "SweepContext",
    "SweepError",
    "calibrate_model",
    "cell_row",
    "cell_rows",
    "describe_model",
    "ensure_ray",
    "estimate_plan",
    "evaluate_cell",
    "fast_frechet",
    "format_estimate",
    "grid_settings",
    "load_prompts",
    "metric_protocol",
    "metric_rows",
    "metric_statistic",
    "plan_cells",
    "plan_sweep",
    "prepare_metrics",
    "resolve",
    "run_cells",
    "run_sweep",
    "sampler_identity",
    "score_rows",
]
