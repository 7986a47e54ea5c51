"""Everything the ``frontier`` command prints, as one JSON-ready summary."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from ldmscale.frontier.budget import budget_verdicts
from ldmscale.frontier.compare import Comparer
from ldmscale.frontier.equal_cost import equal_cost_text, equal_cost_verdicts
from ldmscale.frontier.floors import floor_items
from ldmscale.frontier.optima import (
    curves,
    edge_counts,
    edge_text,
    fresh_text,
    optimal_guidance,
    pareto_frontier,
)
from ldmscale.frontier.rows import FrontierError, _filter, primary_spacing
from ldmscale.metrics.registry import metric_direction
from ldmscale.paired import RowSource


def frontier_summary(
    rows: Sequence[dict],
    metric: str,
    select_by: str | None = None,
    samplers: Sequence[str] | None = None,
    spacing: str | None = None,
    select_seed0: int = 0,
    report_seed0: int | None = None,
    source: RowSource | None = None,
    floors: dict | None = None,
    n_boot: int = 200,
) -> dict[str, Any]:
    """Everything the ``frontier`` command prints (JSON-ready): every optimal-guidance curve
    (all spacings, labelled), the primary spacing, the Pareto frontier and both verdicts at
    that spacing (practical: best within each budget; the paper's: per sampler at equal
    cost), edge and fresh-seed counts, and the floors of ``metric``."""
    primary = spacing or primary_spacing(_filter(rows, samplers))
    all_pts = optimal_guidance(rows, metric, select_by, samplers, None, select_seed0, report_seed0)
    pts = [p for p in all_pts if p.spacing == primary]
    if not pts:
        raise FrontierError(f"no optimal-guidance point at spacing {primary!r}")
    comparer = Comparer(rows, source, n_boot)
    equal = equal_cost_verdicts(pts, comparer)
    spans = budget_verdicts(pts, comparer=comparer)
    return {
        "metric": metric,
        "select_by": select_by or metric,
        "direction": metric_direction(metric),
        "spacing": primary,
        "spacings": sorted({p.spacing for p in all_pts}),
        "select_seed0": select_seed0,
        "report_seed0": report_seed0,
        "curves": [
            {
                "model": ps[0].model,
                "model_hash": ps[0].model_hash,
                "label": ps[0].label(),
                "sampler": s,
                "spacing": sp,
                "primary": sp == primary,
                "points": [p.to_dict() for p in ps],
            }
            for (_m, s, sp), ps in curves(all_pts).items()
        ],
        "edges": edge_counts(pts),
        "edge_text": edge_text(pts),
        "fresh": sum(p.fresh for p in pts),
        "fresh_text": fresh_text(pts),
        "floors": {k: v for k, v in floor_items(floors, metric)},
        "frontier": [p.to_dict() for p in pareto_frontier(pts)],
        "verdicts": [
            {
                "lo_budget": v.lo_budget,
                "hi_budget": v.hi_budget,
                "models": v.models,
                "decided": v.decided,
                "text": v.text(),
            }
            for v in spans
        ],
        "equal_cost": {
            s: {"text": equal_cost_text(s, ms), "rows": [m.to_dict() for m in ms]}
            for s, ms in equal.items()
        },
        "methods": _methods(comparer),
    }


def _methods(comparer: Comparer) -> dict[str, int]:
    return dict(Counter(c.method for c in comparer.done))
