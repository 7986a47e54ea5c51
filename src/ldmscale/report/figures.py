"""The report's figures, after the paper: Fig. 3 (quality vs training compute), Fig. 8
(quality vs guidance), Fig. 9 (quality vs sampling cost) and Fig. 11 (samplers compared).
Each ``fig_*`` writes one PNG and returns ``(path, caption)``, or None without data."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

from ldmscale.frontier import (
    FrontierError,
    Point,
    checkpoint_rows,
    curves,
    final_rows,
    fresh_text,
    pareto_frontier,
    run_key,
    seed0_of,
    spacing_of,
    to_point,
    train_step_of,
)
from ldmscale.metrics.registry import metric_direction
from ldmscale.report.analysis import Analysis, _analysis, _direction_word
from ldmscale.report.inputs import TrainingCurve
from ldmscale.report.plot import (
    _colors,
    _errorbar,
    _floor_caption,
    _floor_lines,
    _labels,
    _mark_edges,
    _model_keys,
    _outside_legend,
    _save,
    _smooth,
)
from ldmscale.samplers import SAMPLER_NAMES, sampler_label


def _samplers_of(rows: Sequence[dict]) -> list[str]:
    have = {str(r["sampler"]) for r in rows}
    return [s for s in SAMPLER_NAMES if s in have] + sorted(have - set(SAMPLER_NAMES))


def fig_training(
    rows: Sequence[dict],
    curves_: Sequence[TrainingCurve],
    metric: str,
    path: Path,
    analysis: Analysis | None = None,
) -> tuple[Path, str] | None:
    """Fig. 3: the metric of scored checkpoints (rows with ``train_step``) vs training compute
    (``train_compute``, else normalized cost x ``train_step``), one line per training run, at
    the one setting they share (the most common), with CIs and floors. Falls back to the
    training loss of ``curves_`` only when no checkpoint was scored. Returns (path, caption),
    or None without data."""
    a = analysis or Analysis(metric)
    ckpt = [r for r in checkpoint_rows(rows) if to_point(r, metric) is not None]
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    ax.set_xscale("log")
    ax.set_xlabel("training compute (normalized cost x training iterations)")
    if ckpt:

        def setting_of(r: dict) -> tuple:
            return (str(r["sampler"]), int(r["steps"]), float(r["guidance"]), spacing_of(r))

        setting = Counter((*setting_of(r), seed0_of(r)) for r in ckpt).most_common(1)[0][0]
        ckpt = [r for r in ckpt if (*setting_of(r), seed0_of(r)) == setting]
        runs: dict[tuple, list[dict]] = {}
        for r in ckpt:
            runs.setdefault(run_key(r), []).append(r)
        order = sorted(
            runs, key=lambda k: (k[1] if k[1] is not None else math.inf, k[2] or -1, k[0])
        )
        by_c = Counter(k[1] for k in order)
        for color, k in zip(_colors(len(order)), order):
            rs = sorted(runs[k], key=train_step_of)
            ps = [to_point(r, metric) for r in rs]
            x = [
                float(r["train_compute"])
                if r.get("train_compute") is not None
                else p.norm_cost * train_step_of(r)
                for p, r in zip(ps, rs)
            ]
            label = f"c={k[1]}" if k[1] is not None else str(k[0])
            if by_c[k[1]] > 1:
                label += f" seed {k[2]}" if k[2] is not None else f" ({Path(k[0]).name})"
            _errorbar(ax, x, ps, 4, color=color, label=label)
        _floor_lines(ax, a)
        s, n, w, sp, s0 = setting
        ax.set_ylabel(f"{metric} of checkpoints ({_direction_word(metric)})")
        caption = (
            f"Quality vs training compute (paper Fig. 3): {metric} of each width's scored "
            f"checkpoints, all sampled with {sampler_label(s)}, {n} steps, guidance "
            f"{w:g}, {sp} spacing, seed set {s0}; error bars are the bootstrap CIs. Training "
            f"compute = normalized cost x iterations." + _floor_caption(a)
        )
    else:
        curves_ = [c for c in curves_ if c.compute]
        if not curves_:
            return None
        curves_ = sorted(curves_, key=lambda c: (c.c if c.c is not None else math.inf, c.label))
        for color, cv in zip(_colors(len(curves_)), curves_):
            ax.plot(cv.compute, cv.loss, color=color, alpha=0.25, lw=0.8)
            ax.plot(cv.compute, _smooth(cv.loss), color=color, lw=1.8, label=cv.label)
        ax.set_ylabel("training loss (not a sample-quality metric)")
        caption = (
            "Training loss vs training compute per width (stand-in for paper Fig. 3: no "
            "checkpoint was scored with a sample-quality metric, so this shows the denoising "
            "loss from the training logs; faint: raw, bold: moving average). Training compute "
            "= normalized cost x iterations."
        )
    ax.grid(alpha=0.3, which="both")
    _outside_legend(fig, ax)
    return _save(fig, path), caption


def fig_guidance(
    rows: Sequence[dict],
    metric: str,
    sampler: str,
    path: Path,
    analysis: Analysis | None = None,
) -> tuple[Path, str] | None:
    """Fig. 8: the metric vs guidance scale, one panel per step count, one line per model, at
    the primary spacing on the selecting seed set; each line's optimum is circled (a red
    triangle when it sits at the grid's edge); floors as lines."""
    a = analysis or _analysis(rows, metric, None)
    rows = [
        r
        for r in final_rows(rows)
        if str(r["sampler"]) == sampler
        and spacing_of(r) == a.spacing
        and seed0_of(r) == a.select_seed0
    ]
    pts = [p for p in (to_point(r, metric) for r in rows) if p is not None]
    if not pts:
        return None
    n_max: dict[tuple, int] = {}
    for p in pts:
        k = (p.model_id, p.steps)
        n_max[k] = max(n_max.get(k, 0), p.n or 0)
    pts = [p for p in pts if (p.n or 0) == n_max[(p.model_id, p.steps)]]
    steps_all = sorted({p.steps for p in pts})
    if len(steps_all) > 6:
        idx = sorted({round(i * (len(steps_all) - 1) / 5) for i in range(6)})
        steps_all = [steps_all[i] for i in idx]
    ncol = 2 if len(steps_all) == 4 else min(3, len(steps_all))
    nrow = math.ceil(len(steps_all) / ncol)
    fig = Figure(figsize=(4.0 * ncol, 3.2 * nrow), layout="constrained")
    axes = fig.subplots(nrow, ncol, squeeze=False, sharey=True)
    labels = _labels(pts)
    models = _model_keys(pts)
    colors = dict(zip(models, _colors(len(models))))
    direction = metric_direction(metric)
    for ax, steps in zip(axes.flat, steps_all):
        for m in models:
            ps = sorted(
                (p for p in pts if p.model_id == m and p.steps == steps), key=lambda p: p.guidance
            )
            if not ps:
                continue
            _errorbar(ax, [p.guidance for p in ps], ps, 3, color=colors[m], label=labels[m])
            opt = (min if direction == "min" else max)(ps, key=lambda p: p.value)
            edge = len(ps) > 1 and opt.guidance in (ps[0].guidance, ps[-1].guidance)
            style = ("^", "red") if edge else ("o", "black")
            ax.plot([opt.guidance], [opt.value], style[0], ms=10, mfc="none", mec=style[1])
        _floor_lines(ax, a)
        ax.set_title(f"{sampler_label(sampler)}, {steps} steps", fontsize=10)
        ax.set_xlabel("guidance scale w")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(steps_all) :]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel(f"{metric} ({_direction_word(metric)})")
    _outside_legend(fig, axes.flat[0])
    caption = (
        f"Quality vs classifier-free guidance (paper Fig. 8): {metric} against guidance scale w "
        f"(eps = u + w (c - u); w = 1 is no guidance) for each width, one panel per step count, "
        f"{sampler_label(sampler)} sampler, {a.spacing} spacing, on the seed set "
        f"the guidance is chosen on (seed0 = {a.select_seed0}). Circles mark each width's "
        f"optimal guidance, red triangles an optimum at the edge of the grid (the true "
        f"optimum may lie outside it); error bars are bootstrap CIs." + _floor_caption(a)
    )
    return _save(fig, path), caption


def _plot_cost(
    ax, pts: Sequence[Point], labels: dict, colors: dict, frontier: bool, primary: str
) -> int:
    """Curves of ``pts`` (the primary spacing solid, other spacings dashed and labelled), edge
    optima marked; returns the number of edge optima marked."""
    n_edge = 0
    for (m, _s, sp), ps in curves(pts).items():
        x = [p.sampling_cost for p in ps]
        if sp == primary:
            _errorbar(ax, x, ps, 4, color=colors[m], label=labels[m])
            n_edge += _mark_edges(ax, x, ps)
        else:
            _errorbar(
                ax, x, ps, 4, color=colors[m], ls="--", marker="s", mfc="none", alpha=0.7,
                label=f"{labels[m]} ({sp} spacing)",
            )  # fmt: skip
    if frontier:
        front = pareto_frontier([p for p in pts if p.spacing == primary])
        ax.plot(
            [p.sampling_cost for p in front],
            [p.value for p in front],
            "k--",
            lw=1,
            label="frontier",
        )
    ax.set_xscale("log")
    ax.set_xlabel("sampling cost (normalized cost x steps)")
    ax.grid(alpha=0.3, which="both")
    return n_edge


def _cost_notes(a: Analysis, pts: Sequence[Point]) -> str:
    others = sorted({p.spacing for p in pts} - {a.spacing})
    s = (
        f" Solid: {a.spacing} spacing (the verdicts'); "
        + (
            f"dashed squares: {', '.join(others)} spacing (a control, not in the verdicts). "
            if others
            else ""
        )
        + "Red triangles: optima at the edge of their guidance grid. "
    )
    prim = [p for p in pts if p.spacing == a.spacing]
    return s + fresh_text(prim)


def fig_cost(
    rows: Sequence[dict],
    metric: str,
    sampler: str,
    path: Path,
    select_by: str | None = None,
    analysis: Analysis | None = None,
) -> tuple[Path, str] | None:
    """Fig. 9: optimal-guidance quality vs sampling cost, one line per model and spacing, CI
    error bars, edge optima marked, floors, and the frontier across widths (dashed)."""
    a = analysis or _analysis(rows, metric, select_by)
    try:
        pts = a.optima(rows, samplers=[sampler], all_spacings=True)
    except FrontierError:
        return None
    if not pts:
        return None
    fig = Figure(figsize=(6.8, 4.6), layout="constrained")
    ax = fig.add_subplot()
    models = _model_keys(pts)
    _plot_cost(ax, pts, _labels(pts), dict(zip(models, _colors(len(models)))), True, a.spacing)
    _floor_lines(ax, a)
    ax.set_ylabel(f"{metric} at optimal guidance ({_direction_word(metric)})")
    ax.set_title(sampler_label(sampler), fontsize=10)
    _outside_legend(fig, ax)
    caption = (
        f"Sampling efficiency (paper Fig. 9): {metric} at each width's optimal guidance "
        f"(chosen by {a.select_by or metric}) against sampling cost = normalized cost x steps, "
        f"{sampler_label(sampler)} sampler. Error bars: bootstrap CIs. Dashed "
        f"black: the frontier, the best quality reachable at each cost by any width."
        + _cost_notes(a, pts)
        + _floor_caption(a)
    )
    return _save(fig, path), caption


def fig_samplers(
    rows: Sequence[dict],
    metric: str,
    path: Path,
    select_by: str | None = None,
    analysis: Analysis | None = None,
) -> tuple[Path, str] | None:
    """Fig. 11: one Fig.-9 panel per sampler (primary spacing), shared y axis, floors."""
    a = analysis or _analysis(rows, metric, select_by)
    samplers = _samplers_of(final_rows(rows))
    panels = []
    for s in samplers:
        try:
            pts = a.optima(rows, samplers=[s])
        except FrontierError:
            continue
        if pts:
            panels.append((s, pts))
    if len(panels) < 2:
        return None
    allp = [p for _, ps in panels for p in ps]
    labels = _labels(allp)
    models = _model_keys(allp)
    colors = dict(zip(models, _colors(len(models))))
    fig = Figure(figsize=(4.2 * len(panels), 3.8), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False, sharey=True)[0]
    for ax, (s, pts) in zip(axes, panels):
        _plot_cost(ax, pts, labels, colors, True, a.spacing)
        _floor_lines(ax, a)
        ax.set_title(sampler_label(s), fontsize=10)
    axes[0].set_ylabel(f"{metric} at optimal guidance ({_direction_word(metric)})")
    _outside_legend(fig, axes[0])
    names = ", ".join(sampler_label(s) for s, _ in panels)
    caption = (
        f"Samplers compared (paper Fig. 11): the Fig. 9 curves for {names}, same axes, "
        f"{a.spacing} spacing. Error bars: bootstrap CIs; dashed: each sampler's frontier "
        f"across widths; red triangles: optima at the edge of their guidance grid."
        + _floor_caption(a)
    )
    return _save(fig, path), caption
