"""Table 1's quality row: each model at one fixed (sampler, steps, guidance) setting, and the
seed-to-seed spread of replicated widths."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ldmscale.frontier.optima import optimal_guidance
from ldmscale.frontier.points import _model_order, assign_labels, to_point
from ldmscale.frontier.rows import (
    FrontierError,
    _filter,
    final_rows,
    model_key,
    primary_spacing,
    seed0_of,
)


def fixed_setting(
    rows: Sequence[dict],
    metric: str,
    sampler: str = "ddim",
    spacing: str | None = None,
    select_seed0: int = 0,
) -> tuple[str, int, float]:
    """The default setting of Table 1's quality row: ``sampler`` (DDIM by default), the
    largest step count stored for every model, and, among the guidance scales stored for every
    model at those steps, the one nearest the median of the models' optimal guidance there
    (chosen on seed set ``select_seed0``; ties: the smaller scale)."""
    spacing = spacing or primary_spacing(final_rows(rows))
    rs = [
        r
        for r in _filter(rows, [sampler], spacing)
        if seed0_of(r) == select_seed0 and to_point(r, metric) is not None
    ]
    if not rs:
        raise FrontierError(f"no {metric} rows for sampler {sampler!r} at spacing {spacing!r}")
    models = {model_key(r) for r in rs}
    by_steps: dict[int, dict[float, set]] = {}
    for r in rs:
        by_steps.setdefault(int(r["steps"]), {}).setdefault(float(r["guidance"]), set()).add(
            model_key(r)
        )
    common = sorted(
        s for s, gs in by_steps.items() if any(len(m) == len(models) for m in gs.values())
    )
    if not common:
        raise FrontierError(f"no {sampler} setting was stored for every model")
    steps = common[-1]
    grid = sorted(g for g, m in by_steps[steps].items() if len(m) == len(models))
    opts = [
        p.guidance
        for p in optimal_guidance(rs, metric, samplers=[sampler], select_seed0=select_seed0)
        if p.steps == steps
    ]
    target = sorted(opts)[len(opts) // 2] if opts else grid[0]
    guidance = min(grid, key=lambda g: (abs(g - target), g))
    return sampler, steps, guidance


def quality_table(
    rows: Sequence[dict],
    metrics: Sequence[str],
    setting: tuple[str, int, float] | None = None,
    spacing: str | None = None,
    select_seed0: int = 0,
    report_seed0: int | None = None,
) -> tuple[tuple[str, int, float], list[dict[str, Any]]]:
    """Table 1's quality row: each model at one fixed (sampler, steps, guidance) setting
    (default :func:`fixed_setting` on ``metrics[0]``), scored on each metric, from seed set
    ``report_seed0`` when stored there (``fresh``), else ``select_seed0``. Returns the setting
    and one record per model: ``label, c, params, model_hash, train_seed, fresh, points``
    (``points``: metric -> :class:`Point`)."""
    spacing = spacing or primary_spacing(final_rows(rows))
    setting = setting or fixed_setting(rows, metrics[0], spacing=spacing, select_seed0=select_seed0)
    sampler, steps, guidance = setting
    rs = [
        r
        for r in _filter(rows, [sampler], spacing)
        if int(r["steps"]) == steps and float(r["guidance"]) == float(guidance)
    ]
    records: dict[str, dict[str, Any]] = {}
    for r in sorted(rs, key=lambda r: int(r.get("n_images") or 0)):  # largest N last, kept
        s0 = seed0_of(r)
        if s0 not in (select_seed0, report_seed0):
            continue
        got = {m: to_point(r, m) for m in metrics}
        if not any(got.values()):
            continue
        rec = records.setdefault(model_key(r), {"points": {}, "seed0": {}})
        for m, p in got.items():
            if p is None:
                continue
            have = rec["seed0"].get(m)
            if report_seed0 is not None and have == report_seed0 and s0 != report_seed0:
                continue  # keep the fresh row
            rec["points"][m] = p
            rec["seed0"][m] = s0
    if not records:
        raise FrontierError(f"no rows at {sampler}, {steps} steps, w={guidance:g}")
    labelled = assign_labels([next(iter(v["points"].values())) for v in records.values()])
    out = []
    for p in sorted(labelled, key=_model_order):
        rec = records[p.model_id]
        out.append(
            {
                "label": p.label(),
                "width": p.width(),
                "c": p.c,
                "params": p.params,
                "model_hash": p.model_hash,
                "train_seed": p.train_seed,
                "fresh": report_seed0 is not None
                and all(s == report_seed0 for s in rec["seed0"].values()),
                "points": rec["points"],
            }
        )
    return setting, out


def replicate_spread(records: Sequence[dict], metric: str) -> list[dict[str, Any]]:
    """Seed-to-seed spread per width with replicates, from :func:`quality_table` records:
    ``width, n_models, values, mean, range`` (max - min) of ``metric``."""
    by_width: dict[str, list[float]] = {}
    for rec in records:
        p = rec["points"].get(metric)
        if p is not None:
            by_width.setdefault(rec["width"], []).append(p.value)
    return [
        {
            "width": w,
            "n_models": len(v),
            "values": v,
            "mean": sum(v) / len(v),
            "range": max(v) - min(v),
        }
        for w, v in by_width.items()
        if len(v) > 1
    ]
