"""The report's tables: trained widths, floors, the optima with their flags, and Table 1's
quality row."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ldmscale.frontier import (
    FrontierError,
    edge_text,
    floor_items,
    fresh_text,
    model_key,
    pareto_frontier,
    quality_table,
    replicate_spread,
    train_step_of,
)
from ldmscale.report.analysis import Analysis
from ldmscale.report.inputs import TrainingCurve
from ldmscale.report.markup import _esc, _score_of, _table
from ldmscale.samplers import sampler_label


def trained_widths(rows: Sequence[dict], curves_: Sequence[TrainingCurve]) -> list[dict]:
    """One record per trained model (by weight hash): model, c, train seed, params, norm_cost,
    last training step (from the rows or the run's log)."""
    out: dict[str, dict] = {}
    for r in rows:
        m = model_key(r)
        rec = out.setdefault(
            m,
            {
                "model": str(r["model"]),
                "c": r.get("c"),
                "train seed": r.get("train_seed"),
                "params": r.get("params"),
                "norm_cost": r.get("norm_cost"),
                "trained steps": None,
            },
        )
        step = train_step_of(r)
        if step is not None:
            rec["trained steps"] = max(step, rec["trained steps"] or 0)
    for cv in curves_:
        match = [v for v in out.values() if cv.c is not None and v["c"] == cv.c]
        if len(match) == 1:
            if match[0]["trained steps"] is None:
                match[0]["trained steps"] = max(cv.steps, default=None)
        elif not match:
            out[cv.label] = {
                "model": cv.label,
                "c": cv.c,
                "train seed": None,
                "params": None,
                "norm_cost": None,
                "trained steps": max(cv.steps, default=None),
            }
    recs = sorted(
        out.values(),
        key=lambda d: (
            d["c"] if d["c"] is not None else math.inf,
            d["train seed"] or -1,
            d["model"],
        ),
    )
    if all(d["train seed"] is None for d in recs):
        for d in recs:
            d.pop("train seed")
    return recs


def floors_html(a: Analysis) -> str:
    """A table of the primary metric's floors, or a note that none were given."""
    items = floor_items(a.floors, a.metric)
    if not items:
        return (
            "<p class='note'>No floors were given (floors.json): the report cannot show how far "
            "each model is from the best possible value.</p>"
        )
    return _table(
        [
            {
                "floor": {
                    "real": "real images of the cells' prompts",
                    "reconstruction": "autoencoder reconstructions",
                }.get(k, k),
                a.metric: _score_of(f),
                "images": f.get("n"),
            }
            for k, f in items
        ]
    )


def optima_html(rows: Sequence[dict], a: Analysis) -> str:
    """Every optimum at the primary spacing with its edge flag and seed set, and the counts."""
    pts = a.optima(rows)
    recs = [
        {
            "model": p.label(),
            "sampler": p.sampler,
            "steps": p.steps,
            "sampling cost": p.sampling_cost,
            "optimal w": p.guidance,
            "grid": f"{p.grid[0]:g}-{p.grid[-1]:g} ({len(p.grid)})" if p.grid else "",
            "edge": (p.at_edge.upper() + " EDGE") if p.at_edge else "",
            "reported on": f"seed set {p.seed0}"
            + (" (fresh)" if p.fresh else " (same images: biased)"),
            a.metric: p.score(),
        }
        for p in pts
    ]
    return (
        f"<p><b>{_esc(edge_text(pts))}</b> {_esc(fresh_text(pts))}</p>\n"
        f"<details><summary>All {len(pts)} optima</summary>\n{_table(recs)}\n</details>"
    )


def quality_html(
    rows: Sequence[dict], a: Analysis, setting: tuple[str, int, float] | None = None
) -> str:
    """Table 1's quality row: each model at one fixed setting, primary metric and alignment
    with CIs, floors as extra rows, and the seed-to-seed spread of replicated widths."""
    metrics = [a.metric] + [m for m in ("alignment",) if m != a.metric]
    have = {m for r in rows for m in (r.get("metrics") or {})}
    metrics = [m for m in metrics if m in have]
    try:
        setting, recs = quality_table(
            rows, metrics, setting, a.spacing, a.select_seed0, a.report_seed0
        )
    except FrontierError as e:
        return f"<p class='note'>Not available: {_esc(e)}.</p>"
    s, n, w = setting
    table = []
    for rec in recs:
        d: dict[str, Any] = {"model": rec["label"], "params": rec["params"]}
        for m in metrics:
            p = rec["points"].get(m)
            d[m] = p.score() if p else ""
        d["seed set"] = "fresh" if rec["fresh"] else "same as selection"
        table.append(d)
    for kind, _f in floor_items(a.floors, a.metric):
        d = {"model": f"floor: {kind}", "params": None}
        for m in metrics:
            fm = dict(floor_items(a.floors, m)).get(kind)
            d[m] = _score_of(fm) if fm else ""
        d["seed set"] = ""
        table.append(d)
    parts = [
        f"<p>Each width at one fixed setting: {_esc(sampler_label(s))}, {n} steps, "
        f"guidance {w:g}, {_esc(a.spacing)} spacing (the paper's Table 1 uses 50-step DDIM at "
        f"one guidance scale). Unless given, the setting is the largest step count stored for "
        f"every width, at the stored guidance nearest the median of the widths' optima there. "
        f"Values on the fresh seed set when stored.</p>",
        _table(table),
    ]
    spread = replicate_spread(recs, a.metric)
    if spread:
        parts.append("<h3>Seed-to-seed spread (replicated widths)</h3>")
        parts.append(
            _table(
                [
                    {
                        "width": d["width"],
                        "models": d["n_models"],
                        f"{a.metric} per seed": ", ".join(f"{v:.4g}" for v in d["values"]),
                        "mean": d["mean"],
                        "range (max - min)": d["range"],
                    }
                    for d in spread
                ]
            )
        )
    return "\n".join(parts)


def frontier_html(rows: Sequence[dict], a: Analysis) -> str:
    """The Pareto frontier over all samplers at the primary spacing (the best quality reachable
    at each sampling cost, with each point's flags), the floors as extra rows."""
    front = pareto_frontier(a.optima(rows))
    return _table(
        [
            {
                "sampling cost": p.sampling_cost,
                "model": p.label(),
                "sampler": p.sampler,
                "steps": p.steps,
                "guidance": p.guidance,
                a.metric: p.score(),
                "flags": p.flags(),
            }
            for p in front
        ]
        + [
            {"sampling cost": None, "model": f"floor: {k}", a.metric: _score_of(f)}
            for k, f in floor_items(a.floors, a.metric)
        ]
    )
