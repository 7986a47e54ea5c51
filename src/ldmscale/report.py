"""The study report: one self-contained HTML page plus PNG figures beside it.

``build_report`` writes ``<out_dir>/index.html`` and ``<out_dir>/figures/*.png`` (referenced
by relative ``<img src>``; inline CSS; no external resources), atomically: everything is
written into a temporary folder that is renamed onto ``out_dir`` at the end. Figures and
tables follow the paper (Mei et al., 2024):

- two verdicts: the paper's (per sampler, which width is best at equal sampling cost, Fig.
  9/11) and the practical one (best configuration within each budget), both decided by a
  paired bootstrap over shared prompts and seeds (CI overlap, labelled weaker, without rows),
1. the model family table (trained widths; the paper-scale Table 1 when given) and Table 1's
   quality row (each width at one fixed setting, with the seed-to-seed spread of replicates),
2. quality vs training compute per width from scored checkpoints (Fig. 3; the training loss
   only when no checkpoint was scored, and the caption says so),
3. quality vs guidance per width and step count (Fig. 8),
4. optimal-guidance quality vs sampling cost per width, with CI error bars (Fig. 9), with
   other timestep spacings (a ``leading`` control) as separate dashed series,
5. the samplers compared (Fig. 11),
6. sample grids of different widths at equal sampling cost (Fig. 10).

Floors (real images, autoencoder reconstructions) are horizontal lines on the cost, guidance
and training figures and rows of the tables. Optima at the edge of their guidance grid are
marked and counted; optima not reported on a fresh seed set are said to be biased. Every
piece of user text (captions, prompts, model names) is HTML-escaped.
"""

from __future__ import annotations

import html
import json
import math
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from ldmscale.frontier import (
    Comparer,
    FrontierError,
    Point,
    assign_labels,
    budget_verdicts,
    checkpoint_rows,
    curves,
    default_metric,
    default_report_seed0,
    edge_text,
    equal_cost_text,
    equal_cost_verdicts,
    final_rows,
    floor_items,
    floor_text,
    fresh_text,
    model_key,
    optimal_guidance,
    pareto_frontier,
    primary_spacing,
    quality_table,
    replicate_spread,
    run_key,
    seed0_of,
    spacing_of,
    to_point,
    train_step_of,
)
from ldmscale.io import atomic_path
from ldmscale.metrics.registry import get_metric, metric_direction
from ldmscale.modelfolder import MODEL_FILE, ModelLoadError, read_model_meta
from ldmscale.paired import RowSource, describe_methods
from ldmscale.samplers import SAMPLER_NAMES, sampler_label

FLOOR_STYLE = {"real": ("tab:red", ":"), "reconstruction": ("tab:orange", "-.")}

DPI = 110


class ReportError(ValueError):
    """Inputs the report cannot use; the message says what is missing."""


@dataclass
class SampleGrid:
    """A sample grid image for Fig. 10: ``path`` to a PNG, a caption, and optionally the
    model and sampling cost it was drawn at (norm_cost x steps)."""

    path: Path
    caption: str = ""
    model: str | None = None
    sampling_cost: float | None = None


@dataclass
class TrainingCurve:
    """One run's training log: ``compute`` = normalized cost x iterations (the paper's Fig. 3)."""

    label: str
    c: int | None
    steps: list[int] = field(default_factory=list)
    compute: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)


@dataclass
class Analysis:
    """The choices every figure and table of one report shares.

    metric: the primary metric; select_by: the metric that picks the optimal guidance;
    spacing: the primary timestep spacing (verdicts and main curves); select_seed0 /
    report_seed0: the seed sets the guidance is chosen on / reported on (None: the same
    images); floors: ``{metric: {kind: {value, lo, hi, n}}}``; comparer: how two cells are
    compared (paired when it finds per-image rows).
    """

    metric: str
    select_by: str | None = None
    spacing: str = "trailing"
    select_seed0: int = 0
    report_seed0: int | None = None
    floors: dict | None = None
    comparer: Comparer = field(default_factory=lambda: Comparer([]))

    def optima(
        self, rows: Sequence[dict], samplers: Sequence[str] | None = None, all_spacings=False
    ) -> list[Point]:
        return optimal_guidance(
            rows,
            self.metric,
            self.select_by,
            samplers,
            None if all_spacings else self.spacing,
            self.select_seed0,
            self.report_seed0,
        )


# ----------------------------------------------------------------------------- inputs


def read_training_log(run: str | Path) -> TrainingCurve:
    """Read ``<run>/log.jsonl`` (``step, loss, train_compute, ...``) and the width from
    ``<run>/model/ldmscale_model.json`` when the run was exported."""
    run = Path(run)
    log = run / "log.jsonl"
    if not log.is_file():
        raise ReportError(f"{run}: no log.jsonl; pass a run folder written by `ldmscale train`")
    c = norm_cost = None
    if (run / "model" / MODEL_FILE).is_file():
        try:
            meta = read_model_meta(run / "model")
        except ModelLoadError as e:
            raise ReportError(f"{run}: {e}") from e
        c, norm_cost = meta.unet_spec.c, meta.norm_cost
    curve = TrainingCurve(label=f"c={c}" if c is not None else run.name, c=c)
    for line in log.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line of a killed run
        if rec.get("loss") is None or rec.get("step") is None:
            continue
        compute = rec.get("train_compute")
        if compute is None:
            if norm_cost is None:
                continue
            compute = float(norm_cost) * int(rec["step"])
        curve.steps.append(int(rec["step"]))
        curve.compute.append(float(compute))
        curve.loss.append(float(rec["loss"]))
    return curve


def load_sample_grids(folder: str | Path) -> list[SampleGrid]:
    """Sample grids under ``folder``: every ``grid.png`` written by ``save_samples`` (its
    ``samples.json`` supplies model, sampler, steps, guidance, cost and prompts when present);
    if there is none, every ``*.png`` directly in ``folder`` (caption = file name)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"samples folder not found: {folder}")
    grids = []
    for grid in sorted(folder.rglob("grid.png")):
        meta: dict[str, Any] = {}
        js = grid.parent / "samples.json"
        if js.is_file():
            try:
                meta = json.loads(js.read_text())
            except json.JSONDecodeError:
                meta = {}
            if not isinstance(meta, dict):
                meta = {}
        scfg = meta.get("sampler") if isinstance(meta.get("sampler"), dict) else {}
        sampler = scfg.get("name") or (meta.get("sampler") if not scfg else None)
        steps, guidance = (
            scfg.get("steps", meta.get("steps")),
            scfg.get("guidance", meta.get("guidance")),
        )
        prompts = [im.get("prompt") for im in meta.get("images") or [] if isinstance(im, dict)]
        prompts = list(dict.fromkeys(p for p in prompts if p))  # unique, in order
        parts = [str(sampler)] if sampler else []
        if steps:
            parts.append(f"{steps} steps")
        if guidance is not None:
            parts.append(
                f"w={guidance:g}" if isinstance(guidance, int | float) else f"w={guidance}"
            )
        text = ", ".join(parts)
        if prompts:
            shown = "; ".join(prompts[:3])
            text += (
                (" -- " if text else "")
                + f"prompts: {shown}"
                + (" ..." if len(prompts) > 3 else "")
            )
        cost = meta.get("sampling_cost")
        grids.append(
            SampleGrid(
                path=grid,
                caption=text or grid.parent.name,
                model=meta.get("model") or meta.get("model_name") or grid.parent.name,
                sampling_cost=float(cost) if cost is not None else None,
            )
        )
    if not grids:
        grids = [SampleGrid(path=p, caption=p.stem) for p in sorted(folder.glob("*.png"))]
    return grids


# ----------------------------------------------------------------------------- helpers


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _direction_word(metric: str) -> str:
    return "lower is better" if metric_direction(metric) == "min" else "higher is better"


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(0.05 + 0.85 * i / max(n - 1, 1)) for i in range(n)]


def _order(p: Point) -> tuple:
    return (p.c if p.c is not None else math.inf, p.train_seed or -1, p.model_id)


def _model_keys(points: Sequence[Point]) -> list[str]:
    """Model identities (weight hash, else name) in width order (smallest first)."""
    first: dict[str, Point] = {}
    for p in points:
        first.setdefault(p.model_id, p)
    return sorted(first, key=lambda m: _order(first[m]))


def _labels(points: Sequence[Point]) -> dict[str, str]:
    """Model identity -> legend label (``c=64``; ``c=64 seed 1`` when two models share a width)."""
    return {p.model_id: p.label() for p in assign_labels(list(points))}


def _err(ps: Sequence[Point]) -> Any:
    """Asymmetric error bars from the CIs (zero where a point has no CI). A CI that does not
    contain its point (rows from another tool's plain percentile bootstrap) is drawn from the
    point to the far end, never as a negative bar."""
    lower = [max(p.value - p.lo, 0.0) if p.has_ci else 0.0 for p in ps]
    upper = [max(p.hi - p.value, 0.0) if p.has_ci else 0.0 for p in ps]
    return [lower, upper]


def _errorbar(ax: Any, x: Sequence[float], ps: Sequence[Point], ms: float, **style: Any) -> None:
    """One series of points at ``x``, markers of size ``ms``, with their CIs as error bars."""
    style.setdefault("marker", "o")
    ax.errorbar(x, [p.value for p in ps], yerr=_err(ps), ms=ms, capsize=2, **style)


def _floor_lines(ax: Any, a: Analysis) -> bool:
    """Draw the primary metric's floors as horizontal lines (with their CI as a band)."""
    items = floor_items(a.floors, a.metric)
    for kind, f in items:
        color, ls = FLOOR_STYLE.get(kind, ("gray", "--"))
        name = {"real": "floor: real images", "reconstruction": "floor: AE reconstructions"}
        ax.axhline(f["value"], color=color, ls=ls, lw=1.3, label=name.get(kind, f"floor: {kind}"))
        if f.get("lo") is not None and f.get("hi") is not None:
            ax.axhspan(f["lo"], f["hi"], color=color, alpha=0.08, lw=0)
    return bool(items)


def _floor_caption(a: Analysis) -> str:
    items = floor_items(a.floors, a.metric)
    if not items:
        return " No floors were given (floors.json), so the best possible value is not shown."
    return " Horizontal lines: floors, " + "; ".join(floor_text(k, f) for k, f in items) + "."


def _mark_edges(ax: Any, x: Sequence[float], ps: Sequence[Point]) -> int:
    """Red triangles on optima at the edge of their guidance grid; returns how many."""
    xs = [xi for xi, p in zip(x, ps) if p.at_edge]
    ys = [p.value for p in ps if p.at_edge]
    if xs:
        ax.plot(xs, ys, "^", ms=9, mfc="none", mec="red", mew=1.4, zorder=5)
    return len(xs)


def _outside_legend(fig: Figure, ax: Any) -> None:
    """One legend for the figure, to the right of the axes (never over the data)."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, title="width", fontsize=7, loc="outside right upper")


def _samplers_of(rows: Sequence[dict]) -> list[str]:
    have = {str(r["sampler"]) for r in rows}
    return [s for s in SAMPLER_NAMES if s in have] + sorted(have - set(SAMPLER_NAMES))


def _main_sampler(rows: Sequence[dict]) -> str:
    """DDIM (the paper's default) when present, else the most common sampler."""
    counts = Counter(str(r["sampler"]) for r in rows)
    return "ddim" if "ddim" in counts else counts.most_common(1)[0][0]


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    return path


def _analysis(rows: Sequence[dict], metric: str, select_by: str | None) -> Analysis:
    return Analysis(metric, select_by, primary_spacing(final_rows(rows)))


# ----------------------------------------------------------------------------- figures


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


def _smooth(y: Sequence[float], frac: float = 0.1) -> list[float]:
    k = max(1, int(len(y) * frac))
    out, acc = [], 0.0
    for i, v in enumerate(y):
        acc += v
        if i >= k:
            acc -= y[i - k]
        out.append(acc / min(i + 1, k))
    return out


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


# ----------------------------------------------------------------------------- verdicts


def verdict_html(
    rows: Sequence[dict],
    metric: str,
    select_by: str | None = None,
    analysis: Analysis | None = None,
) -> str:
    """The practical verdict over all samplers at the primary spacing: which width wins
    within each budget, each winner tested (paired) against the best of every other width."""
    a = analysis or _analysis(rows, metric, select_by)
    pts = a.optima(rows)
    spans = budget_verdicts(pts, comparer=a.comparer)
    labels = sorted(
        {p.width() for p in pts}, key=lambda lab: min(_order(p) for p in pts if p.width() == lab)
    )
    largest = labels[-1]
    items = "\n".join(f"<li>{_esc(s.text())}</li>" for s in spans)
    if len(labels) == 1:
        return (
            f"<p class='verdict'>Only one model size ({_esc(largest)}) is in the results: no "
            f"size comparison is possible; below, its best setting at each budget.</p>\n"
            f"<ul>\n{items}\n</ul>"
        )

    def width_of(label: str) -> str:
        return label.split(" ")[0]

    n_budgets = sum(len(s.results) for s in spans)
    smaller_wins = sum(
        len(s.results) for s in spans if s.decided and width_of(s.models[0]) != largest
    )
    largest_wins = sum(
        len(s.results) for s in spans if s.decided and width_of(s.models[0]) == largest
    )
    ties = n_budgets - smaller_wins - largest_wins
    if smaller_wins and largest_wins:
        overall = (
            f"Within a budget, a model smaller than the largest ({largest}) wins at "
            f"{smaller_wins} of {n_budgets} budgets, the largest wins at {largest_wins}"
        )
    elif smaller_wins:
        overall = (
            f"Within a budget, a model smaller than the largest ({largest}) wins at "
            f"{smaller_wins} of {n_budgets} budgets and the largest never wins"
        )
    elif largest_wins:
        overall = (
            f"Here the largest model ({largest}) wins outright at {largest_wins} of {n_budgets} "
            f"budgets and no smaller model ever does"
        )
    else:
        overall = (
            f"The data do not separate the sizes: at all {n_budgets} budgets the best "
            f"configuration's difference from every other width has a CI that includes 0"
        )
    if ties and (smaller_wins or largest_wins):
        overall += f"; at {ties} budgets the difference's CI includes 0 and no size is declared"
    overall += "."
    how = (
        f"Budgets are every distinct sampling cost (normalized cost x steps) at {a.spacing} "
        f"spacing; at each, the candidates are every (width, sampler, steps) at its optimal "
        f"guidance (chosen by {a.select_by or metric}) with cost within the budget. The best "
        f"{metric} wins only if it beats the best candidate of every other width. "
        + describe_methods(a.comparer.done)
    )
    return (
        f"<p class='verdict'>{_esc(overall)}</p>\n<ul>\n{items}\n</ul>\n"
        f"<p class='note'>{_esc(how)}</p>"
    )


def equal_cost_html(rows: Sequence[dict], analysis: Analysis) -> str:
    """The paper's verdict (Fig. 9/11): per sampler, a table of equal-cost width comparisons
    (budget, the two configurations, the cost ratio matched, winner or tie, paired CI)."""
    a = analysis
    pts = a.optima(rows)
    table = equal_cost_verdicts(pts, a.comparer)
    if not table:
        return "<p class='note'>No two widths can be compared at equal cost.</p>"
    parts = [
        "<p class='note'>Rule: within one sampler, the larger width at each of its step counts "
        "is compared with the smaller width at the step count whose sampling cost is nearest "
        "to, and not above, the larger's (the smaller width never gets more compute); the "
        "cost ratio matched is shown. Costs are not interpolated: interpolation cannot be "
        "paired. Difference = larger - smaller, with its paired bootstrap CI; a width wins "
        f"only when that CI excludes 0. {_esc(a.spacing)} spacing.</p>"
    ]
    for sampler, ms in table.items():
        parts.append(f"<h3>{_esc(sampler_label(sampler))}</h3>")
        parts.append(f"<p>{_esc(equal_cost_text(sampler_label(sampler), ms))}</p>")
        parts.append(
            _table(
                [
                    {
                        "budget": m.budget,
                        "larger": f"{m.larger.label()}, {m.larger.steps} steps, w={m.larger.guidance:g}"
                        + (" (edge)" if m.larger.at_edge else ""),
                        "smaller": f"{m.smaller.label()}, {m.smaller.steps} steps, w={m.smaller.guidance:g}"
                        + (" (edge)" if m.smaller.at_edge else ""),
                        "cost ratio": f"{m.cost_ratio:.2f}",
                        f"larger {a.metric}": m.larger.score(),
                        f"smaller {a.metric}": m.smaller.score(),
                        "winner": m.winner or "tie",
                        "difference": m.comparison.ci_text(),
                    }
                    for m in ms
                ]
            )
        )
    return "\n".join(parts)


# ----------------------------------------------------------------------------- tables

# ----------------------------------------------------------------------------- tables


def _table(records: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    if not records:
        return "<p class='note'>(none)</p>"
    columns = list(columns or records[0].keys())
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    body = "\n".join(
        "<tr>"
        + "".join(f"<td{_num_class(r.get(c))}>{_esc(_cell(r.get(c)))}</td>" for c in columns)
        + "</tr>"
        for r in records
    )
    return f"<table>\n<tr>{head}</tr>\n{body}\n</table>"


def _num_class(v: Any) -> str:
    return " class='num'" if isinstance(v, int | float) and not isinstance(v, bool) else ""


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 10_000:
        return f"{v:,}"
    return str(v)


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


def _score_of(f: dict) -> str:
    p = Point("", None, None, 0.0, "", 0, 0.0, 0.0, "", f["value"], f.get("lo"), f.get("hi"))
    return p.score()


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


# ----------------------------------------------------------------------------- page

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}th{background:#f3f3f3}
td.num{text-align:right;font-variant-numeric:tabular-nums}
details{margin:.5em 0}summary{cursor:pointer;color:#235}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.9em;color:#444;margin-top:.3em}
.verdict{font-size:1.1em;font-weight:600}.note{color:#555;font-size:.9em}
.grids{display:flex;flex-wrap:wrap;gap:1em}.grids figure{flex:1 1 280px;max-width:360px}
"""

# Marks every <img> with data-loaded="1"/"0" once the page has loaded (used by the tests).
_JS = """
window.addEventListener('load', function () {
  var ok = 0, imgs = document.images;
  for (var i = 0; i < imgs.length; i++) {
    var good = imgs[i].complete && imgs[i].naturalWidth > 0;
    imgs[i].setAttribute('data-loaded', good ? '1' : '0');
    if (good) ok++;
  }
  document.body.setAttribute('data-images-loaded', String(ok));
  document.body.setAttribute('data-images-total', String(imgs.length));
});
"""


def _figure(rel: str, caption: str, alt: str) -> str:
    return (
        f"<figure><img src='{_esc(rel)}' alt='{_esc(alt)}'>"
        f"<figcaption>{_esc(caption)}</figcaption></figure>"
    )


def build_report(
    rows: Sequence[dict],
    runs: Sequence[str | Path] = (),
    sample_grids: Sequence[SampleGrid | str | Path] = (),
    out_dir: str | Path = "report",
    family_table: Sequence[dict] | None = None,
    title: str = "ldmscale: model size vs sampling cost",
    primary_metric: str | None = None,
    select_by: str | None = None,
    metric_note: str | None = None,
    floors: dict | None = None,
    spacing: str | None = None,
    select_seed0: int = 0,
    report_seed0: int | str | None = "auto",
    source: RowSource | None = None,
    quality_setting: tuple[str, int, float] | None = None,
    n_boot: int = 200,
) -> Path:
    """Write the HTML report and its figures to ``out_dir`` (replaced atomically).

    rows: results-store rows (``store.rows()``). runs: training run folders (Fig. 3's loss
    fallback and the trained-widths table). sample_grids: grid images for Fig. 10.
    family_table: optional paper-scale Table 1 records. primary_metric: the metric of the
    figures and verdicts (default: the one stored on most rows); select_by: the metric that
    picks the optimal guidance (default: primary_metric). floors: ``{metric: {"real" |
    "reconstruction": {value, lo, hi, n}}}`` (``floors.json``). spacing: the verdicts'
    timestep spacing (default: the most stored). select_seed0 / report_seed0: the seed sets
    the guidance is chosen / reported on (``"auto"``: the other stored set; None: the same
    images). source: where per-image rows come from for paired tests (default: the row
    cache each row's provenance names). quality_setting: Table 1's (sampler, steps, guidance).
    Returns the path of ``index.html``.
    """
    rows = list(rows)
    if not rows:
        raise ReportError("no results rows: run the sweep first (`ldmscale sweep`)")
    metric = primary_metric or default_metric(rows)
    info = get_metric(metric)  # fails early on a metric the registry does not know
    curves_ = [read_training_log(r) for r in runs]
    grids = [
        g if isinstance(g, SampleGrid) else SampleGrid(Path(g), Path(g).stem) for g in sample_grids
    ]
    for g in grids:
        if not Path(g.path).is_file():
            raise FileNotFoundError(f"sample grid image not found: {g.path}")
    out_dir = Path(out_dir)
    finals = final_rows(rows)
    if report_seed0 == "auto":
        report_seed0 = default_report_seed0(rows, select_seed0)
    a = Analysis(
        metric,
        select_by,
        spacing or primary_spacing(finals),
        select_seed0,
        report_seed0,
        floors,
        Comparer(rows, source if source is not None else RowSource(), n_boot),
    )
    sampler = _main_sampler([r for r in finals if spacing_of(r) == a.spacing] or finals)

    with atomic_path(out_dir) as tmp:
        figs = tmp / "figures"
        figs.mkdir(parents=True)
        parts: list[str] = []
        note = metric_note or info.note
        spacings = sorted({spacing_of(r) for r in finals})
        seeds = (
            f"chosen on seed set {select_seed0}, reported on seed set {report_seed0} (fresh)"
            if report_seed0 is not None
            else f"chosen and reported on seed set {select_seed0} (no fresh seed set: biased)"
        )
        parts.append(
            f"<p>Primary metric: <b>{_esc(metric)}</b> ({_esc(_direction_word(metric))}): "
            f"{_esc(note)}. Optimal guidance chosen by {_esc(select_by or metric)}, {_esc(seeds)}. "
            f"Verdicts at <b>{_esc(a.spacing)}</b> timestep spacing"
            + (
                f" (also stored: {_esc(', '.join(s for s in spacings if s != a.spacing))}, shown as "
                f"separate series)"
                if len(spacings) > 1
                else ""
            )
            + f". {len(finals)} result cells over {len({model_key(r) for r in finals})} models.</p>"
        )
        parts.append("<h3>Floors (best possible values)</h3>")
        parts.append(floors_html(a))

        parts.append(
            "<h2 id='verdict-paper'>Verdict 1: widths at equal sampling cost, per sampler (paper Fig. 9/11)</h2>"
        )
        parts.append(equal_cost_html(rows, a))
        parts.append("<h2 id='verdict'>Verdict 2: the best configuration within each budget</h2>")
        parts.append(verdict_html(rows, metric, select_by, a))
        parts.append("<h3>Optimal guidance: edges and seed sets</h3>")
        parts.append(optima_html(rows, a))

        parts.append("<h2 id='family'>1. Model family</h2><h3>Trained widths</h3>")
        parts.append(_table(trained_widths(finals, curves_)))
        parts.append("<h3>Quality at one fixed setting (Table 1's quality row)</h3>")
        parts.append(quality_html(rows, a, quality_setting))
        if family_table:
            parts.append("<h3>Paper-scale family (Table 1 of the paper, computed)</h3>")
            parts.append(_table(list(family_table)))

        def add(section: str, made: tuple[Path, str] | None, missing: str) -> None:
            parts.append(section)
            if made is None:
                parts.append(f"<p class='note'>{_esc(missing)}</p>")
            else:
                p, cap = made
                parts.append(_figure(f"figures/{p.name}", cap, p.stem))

        add(
            "<h2 id='training'>2. Quality vs training compute (Fig. 3)</h2>",
            fig_training(rows, curves_, metric, figs / "fig3_training.png", a),
            "Not available: no checkpoint evaluations in the results and no training logs given.",
        )
        add(
            "<h2 id='guidance'>3. Quality vs guidance (Fig. 8)</h2>",
            fig_guidance(rows, metric, sampler, figs / "fig8_guidance.png", a),
            f"Not available: no {metric} results for the {sampler} sampler.",
        )
        add(
            "<h2 id='cost'>4. Quality vs sampling cost (Fig. 9)</h2>",
            fig_cost(rows, metric, sampler, figs / "fig9_cost.png", select_by, a),
            f"Not available: no {metric} results for the {sampler} sampler.",
        )
        front = pareto_frontier(a.optima(rows))
        parts.append(f"<h3>Frontier over all samplers ({_esc(a.spacing)} spacing)</h3>")
        parts.append(
            _table(
                [
                    {
                        "sampling cost": p.sampling_cost,
                        "model": p.label(),
                        "sampler": p.sampler,
                        "steps": p.steps,
                        "guidance": p.guidance,
                        metric: p.score(),
                        "flags": p.flags(),
                    }
                    for p in front
                ]
                + [
                    {"sampling cost": None, "model": f"floor: {k}", metric: _score_of(f)}
                    for k, f in floor_items(a.floors, metric)
                ]
            )
        )
        add(
            "<h2 id='samplers'>5. Samplers compared (Fig. 11)</h2>",
            fig_samplers(rows, metric, figs / "fig11_samplers.png", select_by, a),
            "Not available: fewer than two samplers in the results.",
        )

        parts.append("<h2 id='samples'>6. Samples at equal sampling cost (Fig. 10)</h2>")
        if grids:
            grids_sorted = sorted(grids, key=lambda g: (g.sampling_cost or 0.0, g.model or ""))
            parts.append("<div class='grids'>")
            for i, g in enumerate(grids_sorted):
                name = f"fig10_samples_{i:02d}.png"
                shutil.copyfile(g.path, figs / name)
                head = g.model or ""
                if g.sampling_cost is not None:
                    head += f" (sampling cost {g.sampling_cost:.3g})"
                cap = f"{head}: {g.caption}" if head else g.caption
                parts.append(_figure(f"figures/{name}", cap, g.model or Path(g.path).stem))
            parts.append("</div>")
            parts.append(
                "<p class='note'>Grids of different widths drawn at (about) the same sampling "
                "cost, so a smaller model gets more steps (paper Fig. 10).</p>"
            )
        else:
            parts.append("<p class='note'>No sample grids were given.</p>")

        page = (
            "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{_esc(title)}</title><style>{_CSS}</style></head>\n<body>\n"
            f"<h1>{_esc(title)}</h1>\n"
            + "\n".join(parts)
            + f"\n<script>{_JS}</script>\n</body></html>\n"
        )
        (tmp / "index.html").write_text(page, encoding="utf-8")
    return out_dir / "index.html"
