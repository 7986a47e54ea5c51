"""The study report: one self-contained HTML page plus PNG figures beside it.

``build_report`` writes ``<out_dir>/index.html`` and ``<out_dir>/figures/*.png`` (referenced
by relative ``<img src>``; inline CSS; no external resources), atomically: everything is
written into a temporary folder that is renamed onto ``out_dir`` at the end. Figures follow
the paper (Mei et al., 2024):

1. the model family table (trained widths; the paper-scale Table 1 when given),
2. quality vs training compute per width (Fig. 3; training loss when no checkpoint was scored),
3. quality vs guidance per width and step count (Fig. 8),
4. optimal-guidance quality vs sampling cost per width, with CI error bars (Fig. 9),
5. the samplers compared (Fig. 11),
6. sample grids of different widths at equal sampling cost (Fig. 10),
7. a plain-language verdict of which size wins at which budget, with its uncertainty.

Every piece of user text (captions, prompts, model names) is HTML-escaped.
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
    FrontierError,
    Point,
    budget_verdicts,
    curves,
    default_metric,
    final_rows,
    metric_direction,
    optimal_guidance,
    pareto_frontier,
    to_point,
    train_step_of,
)
from ldmscale.io import atomic_path

SAMPLER_ORDER = ("ddim", "ddpm", "dpmpp")
SAMPLER_NAMES = {"ddim": "DDIM", "ddpm": "DDPM", "dpmpp": "DPM-Solver++"}

#: Plain-language descriptions of known metrics, for the report's "primary metric" note.
METRIC_NOTES = {
    "fid": "FID (Frechet distance on Inception-v3 pool features), the paper's metric",
    "fd_probe": (
        "FD-probe (Frechet distance on a small probe network's features), used instead of "
        "FID for speed; its values are not comparable to FID's"
    ),
    "fd_effnet": (
        "FD-EffNet (Frechet distance on EfficientNet-Lite0 features), not FID; its values are "
        "not comparable to FID's"
    ),
    "kid": "KID (kernel inception distance)",
    "alignment": "text-image alignment score",
    "clip_score": "CLIP score (text-image alignment)",
}

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


# ----------------------------------------------------------------------------- inputs


def read_training_log(run: str | Path) -> TrainingCurve:
    """Read ``<run>/log.jsonl`` (``step, loss, train_compute, ...``) and the width from
    ``<run>/model/ldmscale_model.json`` when the run was exported."""
    run = Path(run)
    log = run / "log.jsonl"
    if not log.is_file():
        raise ReportError(f"{run}: no log.jsonl; pass a run folder written by `ldmscale train`")
    c = norm_cost = None
    meta_path = run / "model" / "ldmscale_model.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        c = (meta.get("unet_spec") or {}).get("c")
        norm_cost = meta.get("norm_cost")
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


def _model_keys(points: Sequence[Point]) -> list[str]:
    """Model names in width order (smallest first)."""
    first: dict[str, Point] = {}
    for p in points:
        first.setdefault(p.model, p)
    return sorted(first, key=lambda m: (first[m].c if first[m].c is not None else math.inf, m))


def _labels(points: Sequence[Point]) -> dict[str, str]:
    """Model name -> legend label (``c=64``; the model name when two models share a width)."""
    by_c: dict[Any, set] = {}
    for p in points:
        by_c.setdefault(p.c, set()).add(p.model)
    return {
        p.model: (p.label() if p.c is not None and len(by_c[p.c]) == 1 else p.model) for p in points
    }


def _err(ps: Sequence[Point]) -> Any:
    """Asymmetric error bars from the CIs (zero where a point has no CI). A CI that does not
    contain its point (rows from another tool's plain percentile bootstrap) is drawn from the
    point to the far end, never as a negative bar."""
    lower = [max(p.value - p.lo, 0.0) if p.has_ci else 0.0 for p in ps]
    upper = [max(p.hi - p.value, 0.0) if p.has_ci else 0.0 for p in ps]
    return [lower, upper]


def _errorbar(ax: Any, x: Sequence[float], ps: Sequence[Point], ms: float, **style: Any) -> None:
    """One series of points at ``x``, markers of size ``ms``, with their CIs as error bars."""
    ax.errorbar(x, [p.value for p in ps], yerr=_err(ps), marker="o", ms=ms, capsize=2, **style)


def _samplers_of(rows: Sequence[dict]) -> list[str]:
    have = {str(r["sampler"]) for r in rows}
    return [s for s in SAMPLER_ORDER if s in have] + sorted(have - set(SAMPLER_ORDER))


def _main_sampler(rows: Sequence[dict]) -> str:
    """DDIM (the paper's default) when present, else the most common sampler."""
    counts = Counter(str(r["sampler"]) for r in rows)
    return "ddim" if "ddim" in counts else counts.most_common(1)[0][0]


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    return path


# ----------------------------------------------------------------------------- figures


def fig_training(
    rows: Sequence[dict], curves_: Sequence[TrainingCurve], metric: str, path: Path
) -> tuple[Path, str] | None:
    """Fig. 3: the metric on checkpoints vs training compute when rows carry ``train_step``,
    else training loss vs training compute. Returns (path, caption) or None without data."""
    ckpt = [r for r in rows if train_step_of(r) is not None and metric in (r.get("metrics") or {})]
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    ax.set_xscale("log")
    ax.set_xlabel("training compute (normalized cost x training iterations)")
    if ckpt:
        setting = Counter(
            (str(r["sampler"]), int(r["steps"]), float(r["guidance"])) for r in ckpt
        ).most_common(1)[0][0]
        ckpt = [
            r for r in ckpt if (str(r["sampler"]), int(r["steps"]), float(r["guidance"])) == setting
        ]
        pts = {id(r): to_point(r, metric) for r in ckpt}
        allp = list(pts.values())
        labels = _labels(allp)
        models = _model_keys(allp)
        for color, m in zip(_colors(len(models)), models):
            rs = sorted((r for r in ckpt if str(r["model"]) == m), key=train_step_of)
            ps = [pts[id(r)] for r in rs]
            x = [p.norm_cost * train_step_of(r) for p, r in zip(ps, rs)]
            _errorbar(ax, x, ps, 4, color=color, label=labels[m])
        s, n, w = setting
        ax.set_ylabel(f"{metric} of checkpoints ({_direction_word(metric)})")
        caption = (
            f"Quality vs training compute (paper Fig. 3): {metric} of each width's checkpoints, "
            f"all sampled with {SAMPLER_NAMES.get(s, s)}, {n} steps, guidance {w:g}; error bars "
            f"are the bootstrap CIs. Training compute = normalized cost x iterations."
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
    ax.legend(title="width", fontsize=8)
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
    rows: Sequence[dict], metric: str, sampler: str, path: Path
) -> tuple[Path, str] | None:
    """Fig. 8: the metric vs guidance scale, one panel per step count, one line per width;
    the optimum of each line is circled."""
    rows = [r for r in final_rows(rows) if str(r["sampler"]) == sampler]
    pts = [p for p in (to_point(r, metric) for r in rows) if p is not None]
    if not pts:
        return None
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
                (p for p in pts if p.model == m and p.steps == steps), key=lambda p: p.guidance
            )
            if not ps:
                continue
            _errorbar(ax, [p.guidance for p in ps], ps, 3, color=colors[m], label=labels[m])
            opt = (min if direction == "min" else max)(ps, key=lambda p: p.value)
            ax.plot([opt.guidance], [opt.value], "o", ms=10, mfc="none", mec="black")
        ax.set_title(f"{SAMPLER_NAMES.get(sampler, sampler)}, {steps} steps", fontsize=10)
        ax.set_xlabel("guidance scale w")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(steps_all) :]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel(f"{metric} ({_direction_word(metric)})")
    axes.flat[0].legend(title="width", fontsize=8)
    caption = (
        f"Quality vs classifier-free guidance (paper Fig. 8): {metric} against guidance scale w "
        f"(eps = u + w (c - u); w = 1 is no guidance) for each width, one panel per step count, "
        f"{SAMPLER_NAMES.get(sampler, sampler)} sampler. Circles mark each width's optimal "
        f"guidance; error bars are bootstrap CIs."
    )
    return _save(fig, path), caption


def _plot_cost(ax, pts: Sequence[Point], labels: dict, colors: dict, frontier: bool) -> None:
    for (m, _s), ps in curves(pts).items():
        _errorbar(ax, [p.sampling_cost for p in ps], ps, 4, color=colors[m], label=labels[m])
    if frontier:
        front = pareto_frontier(pts)
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


def fig_cost(
    rows: Sequence[dict], metric: str, sampler: str, path: Path, select_by: str | None = None
) -> tuple[Path, str] | None:
    """Fig. 9: optimal-guidance quality vs sampling cost, one line per width, CI error bars,
    and the frontier across widths (dashed)."""
    try:
        pts = optimal_guidance(rows, metric, select_by, samplers=[sampler])
    except FrontierError:
        return None
    if not pts:
        return None
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.add_subplot()
    models = _model_keys(pts)
    _plot_cost(ax, pts, _labels(pts), dict(zip(models, _colors(len(models)))), frontier=True)
    ax.set_ylabel(f"{metric} at optimal guidance ({_direction_word(metric)})")
    ax.set_title(SAMPLER_NAMES.get(sampler, sampler), fontsize=10)
    ax.legend(title="width", fontsize=8)
    caption = (
        f"Sampling efficiency (paper Fig. 9): {metric} at each width's optimal guidance "
        f"(chosen by {select_by or metric}) against sampling cost = normalized cost x steps, "
        f"{SAMPLER_NAMES.get(sampler, sampler)} sampler. Error bars: bootstrap CIs. Dashed: "
        f"the frontier, the best quality reachable at each cost by any width."
    )
    return _save(fig, path), caption


def fig_samplers(
    rows: Sequence[dict], metric: str, path: Path, select_by: str | None = None
) -> tuple[Path, str] | None:
    """Fig. 11: one Fig.-9 panel per sampler, shared y axis."""
    samplers = _samplers_of(final_rows(rows))
    panels = []
    for s in samplers:
        try:
            pts = optimal_guidance(rows, metric, select_by, samplers=[s])
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
        _plot_cost(ax, pts, labels, colors, frontier=True)
        ax.set_title(SAMPLER_NAMES.get(s, s), fontsize=10)
    axes[0].set_ylabel(f"{metric} at optimal guidance ({_direction_word(metric)})")
    axes[0].legend(title="width", fontsize=8)
    names = ", ".join(SAMPLER_NAMES.get(s, s) for s, _ in panels)
    caption = (
        f"Samplers compared (paper Fig. 11): the Fig. 9 curves for {names}, same axes. "
        f"Error bars: bootstrap CIs; dashed: each sampler's frontier across widths."
    )
    return _save(fig, path), caption


# ----------------------------------------------------------------------------- verdict


def verdict_html(rows: Sequence[dict], metric: str, select_by: str | None = None) -> str:
    """The plain-language verdict over all samplers: which width wins at which budget."""
    pts = optimal_guidance(rows, metric, select_by)
    spans = budget_verdicts(pts)
    labels = sorted(
        {p.label() for p in pts},
        key=lambda lab: min(
            (p.c if p.c is not None else math.inf, p.model) for p in pts if p.label() == lab
        ),
    )
    largest = labels[-1]
    if len(labels) == 1:
        items = "\n".join(f"<li>{_esc(s.text())}</li>" for s in spans)
        return (
            f"<p class='verdict'>Only one model size ({_esc(largest)}) is in the results: no "
            f"size comparison is possible; below, its best setting at each budget.</p>\n"
            f"<ul>\n{items}\n</ul>"
        )
    n_budgets = sum(len(s.results) for s in spans)
    smaller_wins = sum(len(s.results) for s in spans if s.decided and s.models[0] != largest)
    largest_wins = sum(len(s.results) for s in spans if s.decided and s.models[0] == largest)
    ties = n_budgets - smaller_wins - largest_wins
    no_ci = any(not p.has_ci for p in pts)
    items = "\n".join(f"<li>{_esc(s.text())}</li>" for s in spans)
    if smaller_wins and largest_wins:
        overall = (
            f"Bigger is not always better here: a model smaller than the largest ({largest}) wins "
            f"outright at {smaller_wins} of {n_budgets} budgets, the largest wins at "
            f"{largest_wins}"
        )
    elif smaller_wins:
        overall = (
            f"Bigger is not better here: a model smaller than the largest ({largest}) wins outright "
            f"at {smaller_wins} of {n_budgets} budgets and the largest never wins outright"
        )
    elif largest_wins:
        overall = (
            f"Here the largest model ({largest}) wins outright at {largest_wins} of {n_budgets} "
            f"budgets and no smaller model ever does, unlike the paper's finding"
        )
    else:
        overall = (
            f"The data do not separate the sizes: at all {n_budgets} budgets the best "
            f"configurations' confidence intervals overlap"
        )
    if ties and (smaller_wins or largest_wins):
        overall += f"; at {ties} budgets the confidence intervals overlap and no size is declared the winner"
    overall += "."
    how = (
        f"Budgets are every distinct sampling cost (normalized cost x steps) in the sweep; at each, "
        f"the candidates are every (width, sampler, steps) at its optimal guidance (chosen by "
        f"{select_by or metric}) with cost within the budget. The best {metric} wins only if no "
        f"other width's bootstrap confidence interval overlaps its own; otherwise the result is a tie."
    )
    if no_ci:
        how += (
            " Some results carry no CI: comparisons with them are by point estimate only (no CI)."
        )
    return (
        f"<p class='verdict'>{_esc(overall)}</p>\n<ul>\n{items}\n</ul>\n"
        f"<p class='note'>{_esc(how)}</p>"
    )


# ----------------------------------------------------------------------------- tables


def _table(records: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    if not records:
        return "<p class='note'>(none)</p>"
    columns = list(columns or records[0].keys())
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    body = "\n".join(
        "<tr>" + "".join(f"<td>{_esc(_cell(r.get(c)))}</td>" for c in columns) + "</tr>"
        for r in records
    )
    return f"<table>\n<tr>{head}</tr>\n{body}\n</table>"


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 10_000:
        return f"{v:,}"
    return str(v)


def trained_widths(rows: Sequence[dict], curves_: Sequence[TrainingCurve]) -> list[dict]:
    """One record per trained model: model, c, params, norm_cost, last logged training step."""
    out: dict[str, dict] = {}
    for r in rows:
        m = str(r["model"])
        out.setdefault(
            m,
            {
                "model": m,
                "c": r.get("c"),
                "params": r.get("params"),
                "norm_cost": r.get("norm_cost"),
                "trained steps": None,
            },
        )
        step = train_step_of(r)
        if step is not None:
            out[m]["trained steps"] = max(step, out[m]["trained steps"] or 0)
    for cv in curves_:
        match = [v for v in out.values() if cv.c is not None and v["c"] == cv.c]
        if match and len(match) == 1:
            match[0]["trained steps"] = max(cv.steps, default=None)
        elif not match:
            out[cv.label] = {
                "model": cv.label,
                "c": cv.c,
                "params": None,
                "norm_cost": None,
                "trained steps": max(cv.steps, default=None),
            }
    return sorted(
        out.values(), key=lambda d: (d["c"] if d["c"] is not None else math.inf, d["model"])
    )


# ----------------------------------------------------------------------------- page

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
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
) -> Path:
    """Write the HTML report and its figures to ``out_dir`` (replaced atomically).

    rows: results-store rows (``store.rows()``). runs: training run folders (for Fig. 3 and
    the trained-widths table). sample_grids: grid images for Fig. 10 (``SampleGrid`` or
    paths). family_table: optional paper-scale Table 1 records (list of dicts). primary_metric:
    the metric the figures and verdict use (default: the one stored on most rows);
    select_by: the metric that picks the optimal guidance (default: primary_metric).
    Returns the path of ``index.html``.
    """
    rows = list(rows)
    if not rows:
        raise ReportError("no results rows: run the sweep first (`ldmscale sweep`)")
    metric = primary_metric or default_metric(rows)
    metric_direction(metric)  # fail early on an unknown metric name
    curves_ = [read_training_log(r) for r in runs]
    grids = [
        g if isinstance(g, SampleGrid) else SampleGrid(Path(g), Path(g).stem) for g in sample_grids
    ]
    for g in grids:
        if not Path(g.path).is_file():
            raise FileNotFoundError(f"sample grid image not found: {g.path}")
    out_dir = Path(out_dir)
    finals = final_rows(rows)
    sampler = _main_sampler(finals)

    with atomic_path(out_dir) as tmp:
        figs = tmp / "figures"
        figs.mkdir(parents=True)
        parts: list[str] = []
        note = metric_note or METRIC_NOTES.get(metric, metric)
        parts.append(
            f"<p>Primary metric: <b>{_esc(metric)}</b> ({_esc(_direction_word(metric))}): "
            f"{_esc(note)}. Optimal guidance chosen by {_esc(select_by or metric)}. "
            f"{len(finals)} result cells over {len({r['model'] for r in finals})} models.</p>"
        )

        parts.append("<h2 id='verdict'>Verdict: which size wins at which budget</h2>")
        parts.append(verdict_html(rows, metric, select_by))

        parts.append("<h2 id='family'>1. Model family</h2><h3>Trained widths</h3>")
        parts.append(_table(trained_widths(finals, curves_)))
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
            fig_training(rows, curves_, metric, figs / "fig3_training.png"),
            "Not available: no checkpoint evaluations in the results and no training logs given.",
        )
        add(
            "<h2 id='guidance'>3. Quality vs guidance (Fig. 8)</h2>",
            fig_guidance(rows, metric, sampler, figs / "fig8_guidance.png"),
            f"Not available: no {metric} results for the {sampler} sampler.",
        )
        add(
            "<h2 id='cost'>4. Quality vs sampling cost (Fig. 9)</h2>",
            fig_cost(rows, metric, sampler, figs / "fig9_cost.png", select_by),
            f"Not available: no {metric} results for the {sampler} sampler.",
        )
        front = pareto_frontier(optimal_guidance(rows, metric, select_by))
        parts.append("<h3>Frontier over all samplers</h3>")
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
                    }
                    for p in front
                ]
            )
        )
        add(
            "<h2 id='samplers'>5. Samplers compared (Fig. 11)</h2>",
            fig_samplers(rows, metric, figs / "fig11_samplers.png", select_by),
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
