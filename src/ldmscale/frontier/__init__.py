"""Optimal guidance, the quality-versus-sampling-cost frontier, and the two verdicts.

Everything here works on the results store's rows (``ResultsStore.rows()``): plain dicts with
``model, model_hash, c, params, norm_cost, sampler, steps, guidance, sampling_cost,
n_images, metrics: {name: {"value", "lo", "hi", "n"}}`` and, from newer sweeps,
``timestep_spacing, seed0, train_step, train_compute, train_seed``. Conventions:

- **Model identity** is the weight hash ``model_hash`` (the model name when a row has none):
  two training seeds of one width are two models, labelled ``c=<c> seed <train_seed>``.
- **Timestep spacing** (``timestep_spacing``, old rows: ``leading``) is part of a curve's
  identity: one curve never mixes spacings. The verdicts use the *primary spacing* (the most
  stored one, or a parameter); other spacings are separate, labelled series.
- **Sampling cost** = normalized cost x sampling steps (the paper's x-axis, Fig. 9-11).
- **Optimal guidance** of a (model, sampler, spacing, steps) group is the guidance scale with
  the best ``select_by`` metric on the rows of seed set ``select_seed0`` (``seed0``; old rows:
  0). When the same setting was also stored on seed set ``report_seed0``, the optimum's value
  and CI come from that row (``Point.fresh = True``): chosen on one set of images, reported
  on another, so the value carries no winner's-curse bias. Otherwise ``fresh = False``: the
  value was chosen and reported on the same images, and is optimistic.
- **Edge flags**: ``Point.at_edge`` is ``"low"``/``"high"`` when the optimum is the smallest
  or largest guidance of its group's grid: the true optimum may lie outside the grid.
- **Direction**: lower is better for ``fid``, ``fd_*``, ``kid``; higher for ``alignment``
  and ``clip_score``: the metric registry's (:func:`ldmscale.metrics.registry.metric_direction`;
  a name it does not know is an error listing the known ones).
- **Winners** are decided by a paired bootstrap of the difference over the images both cells
  share (:mod:`ldmscale.paired`); a tie stays a tie. Without per-image rows the comparison
  falls back to the overlap of the stored CIs, and says that this is the weaker test.
- **Checkpoint rows** (``train_step`` below the largest stored for the same training run) are
  used for Fig. 3 only (:func:`final_rows`).

Modules: :mod:`~ldmscale.frontier.rows` (row fields, filters, ``load_rows``),
:mod:`~ldmscale.frontier.points` (``Point``), :mod:`~ldmscale.frontier.optima` (optimal
guidance, curves, edge and fresh-seed flags, the Pareto frontier),
:mod:`~ldmscale.frontier.compare` (``Comparer``), :mod:`~ldmscale.frontier.budget` (``best``,
``budget_verdicts``), :mod:`~ldmscale.frontier.equal_cost` (the paper's verdict, Fig. 9/11),
:mod:`~ldmscale.frontier.floors` (``floors.json``), :mod:`~ldmscale.frontier.table1` (Table 1's
quality row) and :mod:`~ldmscale.frontier.summary` (what ``ldmscale frontier`` prints).
"""

from ldmscale.frontier.budget import (
    BestResult,
    Rival,
    VerdictSpan,
    best,
    best_of,
    budget_verdicts,
)
from ldmscale.frontier.compare import Comparer
from ldmscale.frontier.equal_cost import Matched, equal_cost_text, equal_cost_verdicts
from ldmscale.frontier.floors import (
    FLOOR_KINDS,
    check_floors,
    floor_items,
    floor_text,
    load_floors,
)
from ldmscale.frontier.optima import (
    curves,
    edge_counts,
    edge_text,
    fresh_text,
    optimal_guidance,
    pareto_frontier,
)
from ldmscale.frontier.points import Point, assign_labels, better, to_point
from ldmscale.frontier.rows import (
    METRIC_PREFERENCE,
    OLD_SPACING,
    FrontierError,
    available_metrics,
    checkpoint_rows,
    default_metric,
    default_report_seed0,
    final_rows,
    load_rows,
    model_key,
    primary_spacing,
    run_key,
    seed0_of,
    seed_sets,
    spacing_of,
    train_seed_of,
    train_step_of,
)
from ldmscale.frontier.summary import frontier_summary
from ldmscale.frontier.table1 import fixed_setting, quality_table, replicate_spread
from ldmscale.metrics.registry import metric_direction

__all__ = [
    "FLOOR_KINDS",
    "METRIC_PREFERENCE",
    "OLD_SPACING",
    "BestResult",
    "Comparer",
    "FrontierError",
    "Matched",
    "Point",
    "Rival",
    "VerdictSpan",
    "assign_labels",
    "available_metrics",
    "best",
    "best_of",
    "better",
    "budget_verdicts",
    "check_floors",
    "checkpoint_rows",
    "curves",
    "default_metric",
    "default_report_seed0",
    "edge_counts",
    "edge_text",
    "equal_cost_text",
    "equal_cost_verdicts",
    "final_rows",
    "fixed_setting",
    "floor_items",
    "floor_text",
    "fresh_text",
    "frontier_summary",
    "load_floors",
    "load_rows",
    "metric_direction",
    "model_key",
    "optimal_guidance",
    "pareto_frontier",
    "primary_spacing",
    "quality_table",
    "replicate_spread",
    "run_key",
    "seed0_of",
    "seed_sets",
    "spacing_of",
    "to_point",
    "train_seed_of",
    "train_step_of",
]
