"""Optimal guidance per (model, sampler, spacing, steps), its curves over sampling cost, the
edge and fresh-seed flags of the optima, and the Pareto frontier across widths."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

from ldmscale.frontier.points import Point, _model_order, assign_labels, better, to_point
from ldmscale.frontier.rows import (
    FrontierError,
    _check_metric,
    _filter,
    _setting_key,
    seed0_of,
    seed_sets,
)
from ldmscale.metrics.registry import metric_direction


def optimal_guidance(
    rows: Sequence[dict],
    metric: str,
    select_by: str | None = None,
    samplers: Sequence[str] | None = None,
    spacing: str | None = None,
    select_seed0: int = 0,
    report_seed0: int | None = None,
) -> list[Point]:
    """One point per (model, sampler, spacing, steps): the guidance with the best ``select_by``
    metric (default: ``metric``) on seed set ``select_seed0``, scored on ``metric``.

    With ``report_seed0``, the value and CI come from the row of the same setting on that seed
    set when it exists (``fresh=True``); otherwise from the selecting row (``fresh=False``).
    ``spacing`` keeps one timestep spacing (default: all, each its own group). Checkpoint rows
    are ignored. Within a group only the rows with the group's largest ``n_images`` compete
    (an adaptive search also stores cheap small-N cells; FD-type metrics are biased by N).
    Ties in ``select_by`` go to the smaller guidance. ``at_edge`` flags an optimum at either
    end of the group's grid (a one-scale grid is not flagged). Points are labelled
    (:func:`assign_labels`) and sorted by (width, model, sampler, spacing, steps).
    """
    select_by = select_by or metric
    rows = _filter(rows, samplers, spacing)
    _check_metric(rows, metric)
    _check_metric(rows, select_by)
    sel_rows = [r for r in rows if seed0_of(r) == select_seed0]
    if not sel_rows:
        have = ", ".join(str(s) for s in sorted(seed_sets(rows))) or "none"
        raise FrontierError(
            f"no result rows on seed set seed0={select_seed0} to choose the guidance on; "
            f"stored seed sets: {have}"
        )
    direction = metric_direction(select_by)
    groups: dict[tuple, list[dict]] = {}
    for r in sel_rows:
        groups.setdefault(_setting_key(r), []).append(r)
    fresh_rows: dict[tuple, dict] = {}
    if report_seed0 is not None and report_seed0 != select_seed0:
        for r in rows:
            if seed0_of(r) != report_seed0 or to_point(r, metric) is None:
                continue
            k = (*_setting_key(r), float(r["guidance"]))
            if k not in fresh_rows or int(r.get("n_images") or 0) > int(
                fresh_rows[k].get("n_images") or 0
            ):
                fresh_rows[k] = r
    out = []
    for key, group in groups.items():
        n_max = max(int(r.get("n_images") or 0) for r in group)
        group = [r for r in group if int(r.get("n_images") or 0) == n_max]
        group = [r for r in group if to_point(r, select_by) and to_point(r, metric)]
        if not group:
            continue
        group.sort(key=lambda r: float(r["guidance"]))
        grid = tuple(sorted({float(r["guidance"]) for r in group}))
        best_row, best_val = None, None
        for r in group:
            v = to_point(r, select_by).value
            if best_val is None or better(v, best_val, direction):
                best_row, best_val = r, v
        g = float(best_row["guidance"])
        edge = None
        if len(grid) > 1:
            edge = "low" if g == grid[0] else "high" if g == grid[-1] else None
        fresh = fresh_rows.get((*key, g))
        p = to_point(fresh if fresh is not None else best_row, metric)
        out.append(
            replace(
                p,
                fresh=fresh is not None,
                at_edge=edge,
                grid=grid,
                select_cell_id=best_row.get("cell_id"),
            )
        )
    out.sort(key=lambda p: (*_model_order(p), p.sampler, p.spacing, p.steps))
    return assign_labels(out)


def curves(points: Iterable[Point]) -> dict[tuple[str, str, str], list[Point]]:
    """Group optimal-guidance points into per-(model identity, sampler, spacing) curves sorted
    by sampling cost (one curve never mixes spacings)."""
    out: dict[tuple[str, str, str], list[Point]] = {}
    for p in points:
        out.setdefault((p.model_id, p.sampler, p.spacing), []).append(p)
    for v in out.values():
        v.sort(key=lambda p: (p.sampling_cost, p.steps))
    return dict(sorted(out.items(), key=lambda kv: (_model_order(kv[1][0]), kv[0][1:])))


def edge_counts(points: Sequence[Point]) -> dict[str, int]:
    """How many optima sit at the low / high edge of their guidance grid, of how many."""
    return {
        "low": sum(p.at_edge == "low" for p in points),
        "high": sum(p.at_edge == "high" for p in points),
        "total": len(points),
    }


def edge_text(points: Sequence[Point]) -> str:
    """``3 of 27 optima sit at the edge of their guidance grid (low: 3, high: 0) ...``."""
    e = edge_counts(points)
    n = e["low"] + e["high"]
    if not n:
        return f"No optimum of the {e['total']} sits at the edge of its guidance grid."
    return (
        f"{n} of {e['total']} optima sit at the edge of their guidance grid (low: {e['low']}, "
        f"high: {e['high']}): the true optimum may lie outside the grid, so those values "
        f"may not be the best the width can do."
    )


def fresh_text(points: Sequence[Point]) -> str:
    """Whether the optima's values are on fresh seeds (unbiased) or not (biased)."""
    n_fresh = sum(p.fresh for p in points)
    if points and n_fresh == len(points):
        return (
            "Every optimum's value is reported on a fresh seed set (the guidance was chosen "
            "on another), so it is unbiased."
        )
    if n_fresh:
        return (
            f"{n_fresh} of {len(points)} optima are reported on a fresh seed set; the other "
            f"{len(points) - n_fresh} were chosen and reported on the same images, so their "
            f"values are biased in their favour (winner's curse)."
        )
    return (
        "No fresh seed set was stored: each optimum was chosen and reported on the same images, "
        "so its value is biased in its favour (winner's curse)."
    )


def pareto_frontier(points: Iterable[Point]) -> list[Point]:
    """The points no cheaper-or-equal point beats: best quality reachable at each cost.

    Sorted by sampling cost; each point is strictly better than every cheaper one.
    """
    pts = list(points)
    if not pts:
        return []
    direction = metric_direction(pts[0].metric)
    sign = 1.0 if direction == "min" else -1.0
    pts.sort(key=lambda p: (p.sampling_cost, sign * p.value))
    front: list[Point] = []
    for p in pts:
        if not front or better(p.value, front[-1].value, direction):
            if front and front[-1].sampling_cost == p.sampling_cost:
                continue  # same cost, worse (sorted best-first within a cost)
            front.append(p)
    return front
