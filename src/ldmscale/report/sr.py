"""The report sections of the study task ``sr`` (:mod:`ldmscale.study.task_sr`).

- a table of every width's SR quality at each sampling step count, with the baselines
  (bicubic upsampling of the LR; the autoencoder's reconstruction of the ground truth, the
  ceiling of a latent SR model) on the same images;
- Fig. 4: quality against fine-tuning compute (normalized cost x fine-tuning steps) per width,
  from the kept exports; Fig. 12: quality against sampling cost (normalized cost x steps), in
  two panels (steps <= 20, steps > 20); bars are 95% bootstrap CIs over the images;
- an LR | bicubic | SR per width | GT grid;
- the readings, each from paired bootstraps over the shared images (A = the larger width):
  (a) at equal fine-tuning compute (the smaller width given at least as much, see
  :data:`COMPUTE_TOLERANCE`), does the larger width reach better quality?
  (b) at equal sampling cost with <= 20 steps, does the smaller width win? (c) above 20 steps,
  does the larger one? Two cells are compared when their costs differ by at most
  :data:`COST_TOLERANCE` (a factor); a pair counts for (b) when both step counts are <= 20, for
  (c) when both are > 20.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ldmscale.report.markup import _esc, _figure, _table

#: Largest cost ratio (either way) of two cells compared "at equal cost".
COST_TOLERANCE = 1.3
#: Reading (a) pairs each export of the larger width with the smaller width's cheapest export
#: of at least its fine-tuning compute (at most this factor more): the smaller width never has
#: less compute, so "the larger wins" is not an artefact of the matching.
COMPUTE_TOLERANCE = 2.0
#: The step count that splits Fig. 12 and readings (b) and (c), as in the paper.
STEP_SPLIT = 20
N_BOOT = 200


def _label(metric: str) -> str:
    from ldmscale.metrics.registry import get_metric

    return get_metric(metric).label


def _fmt(m: dict[str, float]) -> str:
    return f"{m['value']:.4g} [{m['lo']:.4g}, {m['hi']:.4g}]"


def _rows(run: Any) -> list[dict]:
    from ldmscale.study.task_sr import sr_cells
    from ldmscale.sweep.evaluate import cell_rows

    cells = sr_cells(run)
    if not cells or not Path(run.sweep_cfg.store).is_file():
        return []
    out = run.rows([_Plan(cells)])
    for r in out:
        r["_per_image"] = cell_rows(r)
        r["_width"] = int(r["c"]) if r.get("c") is not None else None
        r["_compute"] = float(r["norm_cost"]) * int(r.get("train_step") or 0)
    return out


class _Plan:
    def __init__(self, cells: list[Any]) -> None:
        self.cells = cells


def _finals(rows: list[dict], cfg: Any) -> list[dict]:
    from ldmscale.study.task_sr import sr_run_dir

    paths = {str((sr_run_dir(cfg, c) / "model").resolve()) for c in cfg.widths}
    return [r for r in rows if str(Path(r["model_path"]).resolve()) in paths]


def _quality_table(finals: list[dict], base: dict, metrics: Sequence[str]) -> str:
    recs = []
    for r in sorted(finals, key=lambda r: (r["_width"], r["steps"])):
        rec = {"model": f"c{r['_width']}", "steps": r["steps"], "sampling cost": r["sampling_cost"]}
        recs.append(rec | {_label(m): _fmt(r["metrics"][m]) for m in metrics})
    for name, scores in base.get("scores", {}).items():
        rec = {"model": name, "steps": None, "sampling cost": None}
        recs.append(rec | {_label(m): _fmt(scores[m]) for m in metrics if m in scores})
    return _table(recs)


def _plot(ax: Any, pts: list[dict], metric: str, x: str, label: str, color: Any) -> None:
    pts = sorted(pts, key=lambda r: r[x])
    xs = [r[x] for r in pts]
    ys = [r["metrics"][metric]["value"] for r in pts]
    err = [
        [y - r["metrics"][metric]["lo"] for y, r in zip(ys, pts)],
        [r["metrics"][metric]["hi"] - y for y, r in zip(ys, pts)],
    ]
    ax.errorbar(xs, ys, yerr=err, marker="o", ms=3, capsize=2, label=label, color=color)


def _baseline_lines(ax: Any, base: dict, metric: str) -> None:
    styles = {"bicubic": ("tab:gray", "--"), "autoencoder": ("tab:orange", "-.")}
    for name, scores in base.get("scores", {}).items():
        if metric in scores:
            color, ls = styles.get(name, ("k", ":"))
            ax.axhline(scores[metric]["value"], color=color, ls=ls, lw=1, label=name)


def _fig(
    rows_by_width: dict[int, list[dict]], metric: str, x: str, base: dict, path: Path, split: bool
) -> Path:
    from matplotlib.figure import Figure

    panels = (
        [
            ("steps <= 20", lambda r: r["steps"] <= STEP_SPLIT),
            ("steps > 20", lambda r: r["steps"] > STEP_SPLIT),
        ]
        if split
        else [("", None)]
    )
    fig = Figure(figsize=(5.2 * len(panels), 3.6))
    colors = [f"C{i}" for i in range(len(rows_by_width))]
    for i, (title, keep) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for color, (c, pts) in zip(colors, sorted(rows_by_width.items())):
            pts = [r for r in pts if keep is None or keep(r)]
            if pts:
                _plot(ax, pts, metric, x, f"c={c}", color)
        _baseline_lines(ax, base, metric)
        ax.set_xscale("log")
        ax.set_xlabel(
            "sampling cost (norm. cost x steps)"
            if x == "sampling_cost"
            else "fine-tuning compute (norm. cost x steps)"
        )
        ax.set_ylabel(_label(metric))
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _grid_png(grid_path: Path, widths: Sequence[int], out: Path, zoom: int = 3) -> Path:
    """LR (nearest-upsampled) | bicubic | SR per width | GT, one row per image, labelled."""
    from PIL import Image, ImageDraw

    g = np.load(grid_path)
    cols = ["lr", "bicubic", *[f"c{c}" for c in widths], "gt"]
    names = ["LR", "bicubic", *[f"SR c={c}" for c in widths], "GT"]
    hr = g["gt"].shape[1]
    side, pad, head = hr * zoom, 4, 14
    k = len(g["gt"])
    canvas = Image.new("RGB", (len(cols) * (side + pad), head + k * (side + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    for j, (col, name) in enumerate(zip(cols, names)):
        draw.text((j * (side + pad) + 2, 1), name, fill="black")
        for i, im in enumerate(g[col]):
            tile = Image.fromarray(im).resize((side, side), Image.NEAREST)
            canvas.paste(tile, (j * (side + pad), head + i * (side + pad)))
    canvas.save(out)
    return out


def _num(v: float) -> str:
    """``v`` to 4 significant digits, float noise (|v| < 1e-12) shown as 0."""
    return f"{0.0 if abs(v) < 1e-12 else v:.4g}"


def _statistic(metric: str, protocol: dict) -> Any:
    from ldmscale.metrics.protocol import metric_statistic

    return metric_statistic(metric, protocol)


def _compare(a: dict, b: dict, metric: str) -> Any:
    """Paired bootstrap of ``metric(a) - metric(b)`` over the shared images, or None."""
    from ldmscale.metrics.registry import metric_direction
    from ldmscale.paired import paired_difference

    ra, rb = a["_per_image"], b["_per_image"]
    if ra is None or rb is None:
        return None
    return paired_difference(
        ra[metric],
        rb[metric],
        _statistic(metric, a["protocol"]),
        n_boot=N_BOOT,
        seed=0,
        direction=metric_direction(metric),
    )


def _nearest(x: float, pts: list[dict], key: str) -> dict | None:
    best = min(pts, key=lambda r: abs(math.log(r[key] / x)), default=None)
    if best is None or abs(math.log(best[key] / x)) > math.log(COST_TOLERANCE):
        return None
    return best


def _at_least(x: float, pts: list[dict], key: str) -> dict | None:
    """The cheapest of ``pts`` costing at least ``x`` and at most ``COMPUTE_TOLERANCE x``."""
    ok = [r for r in pts if x <= r[key] <= COMPUTE_TOLERANCE * x]
    return min(ok, key=lambda r: r[key], default=None)


def _pairs(
    by_width: dict[int, list[dict]], key: str, match: Any = _nearest
) -> list[tuple[dict, dict]]:
    """(larger-width cell, smaller-width cell matched on the ``key`` cost by ``match``)."""
    out = []
    widths = sorted(by_width)
    for i, small in enumerate(widths):
        for large in widths[i + 1 :]:
            for r in by_width[large]:
                if r[key] > 0:
                    other = match(r[key], [p for p in by_width[small] if p[key] > 0], key)
                    if other is not None:
                        out.append((r, other))
    return out


def _reading(pairs: list[tuple[dict, dict]], metric: str, ask: str) -> tuple[str, list[dict]]:
    """The tally of larger-vs-smaller outcomes, and one table record per pair."""
    recs, tally = [], {"a": 0, "b": 0, "tie": 0}
    for large, small in pairs:
        res = _compare(large, small, metric)
        if res is None:
            continue
        tally[res.outcome()] += 1
        recs.append(
            {
                "larger": f"c{large['_width']} x{large['steps']} @{large['train_step']}",
                "smaller": f"c{small['_width']} x{small['steps']} @{small['train_step']}",
                "cost ratio": round(large["_cost"] / small["_cost"], 2),
                f"{_label(metric)} larger - smaller": (
                    f"{_num(res.diff)} [{_num(res.lo)}, {_num(res.hi)}]"
                ),
                "winner": {"a": "larger", "b": "smaller", "tie": "tie"}[res.outcome()],
            }
        )
    n = sum(tally.values())
    if not n:
        return f"{ask}: no comparable pairs (costs within x{COST_TOLERANCE}).", recs
    text = (
        f"{ask} {_label(metric)}: the larger width wins {tally['a']} of {n} paired "
        f"comparisons, the smaller {tally['b']}, {tally['tie']} ties (95% paired CIs)."
    )
    return text, recs


def sr_sections(run: Any, figs: Path) -> list[str]:
    """The task's HTML sections (figures written under ``figs``)."""
    from ldmscale.study.task_sr import options, sr_root

    cfg, o = run.cfg, options(run.cfg)
    rows = _rows(run)
    base_path = sr_root(cfg) / "baselines.json"
    base = json.loads(base_path.read_text()) if base_path.is_file() else {}
    parts = ["<h2>Super-resolution (x4, Real-ESRGAN degradation)</h2>"]
    if not rows:
        return [*parts, "<p class='note'>No SR cells stored yet (run the sr stages).</p>"]
    finals = _finals(rows, cfg)
    kept = [r for r in rows if r["steps"] == o.checkpoint_steps]
    parts.append(
        f"<p>{o.n_images} validation images, degraded with preset <code>{_esc(o.degradation)}"
        f"</code> (image i with seed {o.lr_seed0}+i); sampler {_esc(o.sampler)} "
        f"({_esc(o.spacing)}), guidance 1; every width fine-tuned {o.steps} steps of "
        f"{o.batch_size} from its text-to-image model. Values: [95% bootstrap CI].</p>"
    )
    parts.append(_quality_table(finals, base, o.metrics))
    by_w_final: dict[int, list[dict]] = {}
    for r in finals:
        by_w_final.setdefault(r["_width"], []).append(r | {"_cost": r["sampling_cost"]})
    by_w_kept: dict[int, list[dict]] = {}
    for r in kept:
        by_w_kept.setdefault(r["_width"], []).append(r | {"_cost": r["_compute"]})
    for metric in o.reading_metrics:
        p4 = _fig(by_w_kept, metric, "_compute", base, figs / f"sr_fig4_{metric}.png", False)
        p12 = _fig(by_w_final, metric, "sampling_cost", base, figs / f"sr_fig12_{metric}.png", True)
        parts.append(
            _figure(
                f"figures/{p4.name}",
                f"Fig. 4 analogue: {_label(metric)} at "
                f"{o.checkpoint_steps} steps against fine-tuning compute",
                p4.stem,
            )
        )
        parts.append(
            _figure(
                f"figures/{p12.name}",
                f"Fig. 12 analogue: {_label(metric)} "
                "against sampling cost (left: <= 20 steps, right: > 20)",
                p12.stem,
            )
        )
    grid = sr_root(cfg) / "grid.npz"
    if grid.is_file():
        g = _grid_png(grid, cfg.widths, figs / "sr_grid.png")
        parts.append(
            _figure(
                f"figures/{g.name}",
                f"LR | bicubic | SR per width ({o.grid_steps} steps) | GT",
                g.stem,
            )
        )
    parts.append("<h3>Readings</h3>")
    for metric in o.reading_metrics:
        for tag, pairs in _reading_pairs(by_w_kept, by_w_final):
            text, recs = _reading(pairs, metric, tag)
            parts.append(
                f"<p>{_esc(text)}</p><details><summary>pairs</summary>{_table(recs)}</details>"
            )
    return parts


def _reading_pairs(by_w_kept: dict, by_w_final: dict) -> list[tuple[str, list]]:
    cost_pairs = _pairs(by_w_final, "_cost")
    low = [(a, b) for a, b in cost_pairs if max(a["steps"], b["steps"]) <= STEP_SPLIT]
    high = [(a, b) for a, b in cost_pairs if min(a["steps"], b["steps"]) > STEP_SPLIT]
    return [
        ("(a) At equal fine-tuning compute", _pairs(by_w_kept, "_cost", _at_least)),
        ("(b) At equal sampling cost, <= 20 steps", low),
        ("(c) At equal sampling cost, > 20 steps", high),
    ]
