"""The ``distill`` task's report sections: Fig. 13 and Fig. 19 and the readings (a)-(c).

Every point is a (model, sampler, steps) setting at its optimal guidance on the study's seed
set (distilled and undistilled chosen alike, on the same images), read from the one results
store; comparisons are paired bootstraps over the images both cells share
(:class:`~ldmscale.frontier.Comparer`). Sampling cost is the paper's ``normalized cost x
steps``; the "with CFG" axis multiplies it by the UNet evaluations per step (2 with the
doubled batch, 1 at ``w = 1`` or for a guidance-embedding model).

Readings, each per width with the paired difference (A - B) and its 95% CI:

(a) the consistency-distilled model at 4 steps (its best sampler) against its own teacher at
    4 steps (the teacher's best sampler): equal cost on both axes when both use CFG.
(b) each larger width's distilled 4-step point against each smaller width's best undistilled
    point whose cost (without the CFG doubling) is at most the distilled point's.
(c) each guided stage (``ddim_grid`` at N steps) against its teacher's DDIM at N steps; the
    gains are "consistent" when every width has the same outcome at a stage.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ldmscale.frontier import Comparer, Point, default_metric, optimal_guidance, pareto_frontier
from ldmscale.metrics.registry import metric_direction
from ldmscale.report.markup import _esc, _figure, _table

#: Words for a comparison's outcome (``"a"``: A better).
_OUTCOME = {"a": "better", "b": "worse", "tie": "tie (CI includes 0)"}


def evaluations_per_step(p: Point, kind: str) -> int:
    """UNet evaluations per image and step of ``p`` (1 for a guided stage's embedding)."""
    return 1 if kind.startswith("guided") or p.guidance == 1.0 else 2


def _best(points: Sequence[Point]) -> Point | None:
    if not points:
        return None
    sign = 1 if metric_direction(points[0].metric) == "min" else -1
    return min(points, key=lambda p: sign * p.value)


def _pair(cmp: Comparer, a: Point, b: Point, kind_a: str, kind_b: str) -> dict[str, Any]:
    res = cmp(a, b)
    return {
        "A": f"c={a.c} {kind_a}: {a.sampler} {a.steps} steps w={a.guidance:g}",
        "B": f"c={b.c} {kind_b}: {b.sampler} {b.steps} steps w={b.guidance:g}",
        "A value": a.value,
        "B value": b.value,
        "A - B": res.diff,
        "CI lo": res.lo,
        "CI hi": res.hi,
        "method": res.method,
        "A is": _OUTCOME[res.outcome],
        "outcome": res.outcome,
    }


def distill_points(rows: Sequence[dict], metric: str, kinds: dict[str, tuple[int, str]]):
    """Optimal-guidance points of ``rows`` by (width, kind); ``kinds``: model hash -> (c, kind)."""
    out: dict[tuple[int, str], list[Point]] = {}
    for p in optimal_guidance(rows, metric):
        c, kind = kinds.get(p.model_hash or "", (p.c, "teacher"))
        out.setdefault((c, kind), []).append(p)
    return out


def readings(pts: dict[tuple[int, str], list[Point]], cmp: Comparer) -> dict[str, list[dict]]:
    """The readings (a), (b), (c) (module docstring) as table records."""
    widths = sorted({c for c, _ in pts})
    a_rows, b_rows, c_rows = [], [], []
    for c in widths:
        cd = _best([p for p in pts.get((c, "cd"), []) if p.steps == 4])
        t4 = _best([p for p in pts.get((c, "teacher"), []) if p.steps == 4])
        if cd and t4:
            a_rows.append({"width": c, **_pair(cmp, cd, t4, "cd", "teacher")})
        for kind in sorted({k for w, k in pts if w == c and k.startswith("guided")}):
            for p in pts[(c, kind)]:
                t = [q for q in pts.get((c, "teacher"), []) if q.steps == p.steps]
                t = [q for q in t if q.sampler == "ddim"] or t
                if t:
                    c_rows.append(
                        {
                            "width": c,
                            "stage": kind,
                            "steps": p.steps,
                            **_pair(cmp, p, t[0], kind, "teacher"),
                        }
                    )
    for big in widths:
        cd = _best([p for p in pts.get((big, "cd"), []) if p.steps == 4])
        if cd is None:
            continue
        for small in (w for w in widths if w < big):
            under = [
                p
                for p in pts.get((small, "teacher"), [])
                if p.sampling_cost <= cd.sampling_cost * (1 + 1e-9)
            ]
            best = _best(under)
            if best is not None:
                row = {
                    "smaller": small,
                    "larger (distilled)": big,
                    **_pair(cmp, best, cd, "teacher", "cd"),
                }
                row["cost A"], row["cost B"] = best.sampling_cost, cd.sampling_cost
                b_rows.append(row)
    return {"a": a_rows, "b": b_rows, "c": c_rows}


def summary(r: dict[str, list[dict]]) -> dict[str, str]:
    """One sentence per reading."""
    a = r["a"]
    ties, worse = (sum(x["outcome"] == o for x in a) for o in ("tie", "b"))
    a_text = (
        f"(a) distilled (4 steps) better than its teacher (4 steps) at equal cost: "
        f"{sum(x['outcome'] == 'a' for x in a)} of {len(a)} widths"
        + (" - every width." if a and all(x["outcome"] == "a" for x in a) else "")
        + f" ({ties} ties, {worse} worse)."
    )
    b = r["b"]
    matched = [x for x in b if x["outcome"] in ("a", "tie")]
    b_text = (
        f"(b) a smaller undistilled width matches or beats a larger distilled one at no more "
        f"sampling cost in {len(matched)} of {len(b)} pairs"
        + (
            ": " + ", ".join(f"c={x['smaller']} vs c={x['larger (distilled)']}" for x in matched)
            if matched
            else ""
        )
        + "."
    )
    stages: dict[str, set[str]] = {}
    for x in r["c"]:
        stages.setdefault(x["stage"], set()).add(x["outcome"])
    consistent = [s for s, o in stages.items() if len(o) == 1]
    c_text = (
        f"(c) guided-distillation stages with the same outcome against the teacher at every "
        f"width: {len(consistent)} of {len(stages)} ("
        + "; ".join(f"{s}: {', '.join(sorted(_OUTCOME[o] for o in stages[s]))}" for s in stages)
        + ")."
    )
    return {"a": a_text, "b": b_text, "c": c_text}


def _fig13(pts, metric: str, path: Path) -> Path:
    from matplotlib.figure import Figure

    from ldmscale.report.plot import _colors, _err, _save

    widths = sorted({c for c, _ in pts})
    colors = dict(zip(widths, _colors(len(widths))))
    fig = Figure(figsize=(11, 4.4), layout="constrained")
    for i, doubled in enumerate((False, True)):
        ax = fig.add_subplot(1, 2, i + 1)

        def x(p: Point, kind: str, doubled: bool = doubled) -> float:
            return p.sampling_cost * (evaluations_per_step(p, kind) if doubled else 1)

        undistilled = []
        for c in widths:
            for kind, style, label in (
                ("teacher", "o-", "undistilled (best sampler)"),
                ("cd", "s--", "consistency-distilled"),
            ):
                ps = pts.get((c, kind), [])
                by_steps: dict[int, Point] = {}
                for p in ps:
                    if p.steps not in by_steps or p is _best([p, by_steps[p.steps]]):
                        by_steps[p.steps] = p
                ps = [by_steps[s] for s in sorted(by_steps)]
                if kind == "teacher":
                    undistilled += [(x(p, kind), p) for p in ps]
                if ps:
                    ax.errorbar(
                        [x(p, kind) for p in ps], [p.value for p in ps], yerr=_err(ps),
                        fmt=style, color=colors[c], ms=5, capsize=2, label=f"c={c} {label}",
                    )  # fmt: skip
        front = pareto_frontier([replace(p, sampling_cost=v) for v, p in undistilled])
        if front:
            ax.plot([p.sampling_cost for p in front], [p.value for p in front], "k:", lw=1,
                    label="undistilled frontier")  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel(
            "sampling cost"
            + (
                " x UNet evaluations per step (CFG doubled)"
                if doubled
                else " (normalized cost x steps)"
            )
        )
        ax.set_ylabel(metric)
        ax.set_title(
            "with the CFG doubling" if doubled else "without the CFG doubling", fontsize=10
        )
        if i == 1:
            ax.legend(fontsize=6, loc="best")
    return _save(fig, path)


def _fig19(pts, metric: str, path: Path) -> Path:
    from matplotlib.figure import Figure

    from ldmscale.report.plot import _colors, _err, _save

    widths = sorted({c for c, _ in pts})
    colors = dict(zip(widths, _colors(len(widths))))
    fig = Figure(figsize=(6.8, 4.4), layout="constrained")
    ax = fig.add_subplot()
    for c in widths:
        stages = sorted(
            (p for (w, k), ps in pts.items() if w == c and k.startswith("guided") for p in ps),
            key=lambda p: p.steps,
        )
        if not stages:
            continue
        teacher = [
            next(
                (
                    q
                    for q in pts.get((c, "teacher"), [])
                    if q.steps == p.steps and q.sampler == "ddim"
                ),
                None,
            )
            for p in stages
        ]
        ax.errorbar([p.steps for p in stages], [p.value for p in stages], yerr=_err(stages),
                    fmt="^-", color=colors[c], ms=6, capsize=2, label=f"c={c} guided stages")  # fmt: skip
        tp = [(p.steps, q) for p, q in zip(stages, teacher) if q is not None]
        if tp:
            ax.errorbar([s for s, _ in tp], [q.value for _, q in tp], yerr=_err([q for _, q in tp]),
                        fmt="o--", color=colors[c], ms=4, capsize=2, alpha=0.7,
                        label=f"c={c} teacher DDIM")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sampling steps (stage)")
    ax.set_ylabel(metric)
    ax.legend(fontsize=7)
    return _save(fig, path)


def distill_sections(run: Any, figures: Path) -> list[str]:
    """The task's HTML sections (Fig. 13, Fig. 19, the readings), from ``run``'s store; the
    readings are also written to ``figures/distill_readings.json``."""
    from ldmscale.paired import RowSource
    from ldmscale.study.task_distill import distill_plan, kind_of

    if not Path(run.sweep_cfg.store).is_file():
        return ["<h2>Distillation</h2><p class='note'>No results stored yet.</p>"]
    rows = run.rows([run.sweep_plan(), distill_plan(run)])
    rows = [r for r in rows if int(r.get("seed0") or 0) == run.sweep_cfg.seed0]
    if not any(kind_of(r["model_path"]) != "teacher" for r in rows):
        return ["<h2>Distillation</h2><p class='note'>No distilled model is swept yet.</p>"]
    metric = run.cfg.primary_metric or default_metric(rows)
    kinds = {r["model_hash"]: (int(r["c"]), kind_of(r["model_path"])) for r in rows}
    pts = distill_points(rows, metric, kinds)
    cmp = Comparer(rows, RowSource(run.sweep_cfg.rows_dir))
    r = readings(pts, cmp)
    text = summary(r)
    (figures / "distill_readings.json").write_text(
        json.dumps({"metric": metric, "summary": text, **r}, indent=1, default=str)
    )
    f13 = _fig13(pts, metric, figures / "distill_fig13.png")
    f19 = _fig19(pts, metric, figures / "distill_fig19.png")
    cols_a = ["width", "A", "B", "A value", "B value", "A - B", "CI lo", "CI hi", "A is"]
    cols_b = [
        "smaller",
        "larger (distilled)",
        "A",
        "B",
        "cost A",
        "cost B",
        "A - B",
        "CI lo",
        "CI hi",
        "A is",
    ]
    cols_c = ["width", "stage", "steps", "A", "B", "A - B", "CI lo", "CI hi", "A is"]
    return [
        "<h2>Distillation (paper Sec. 3.6, Fig. 13 and 19)</h2>",
        "<p class='verdict'>" + "<br>".join(_esc(t) for t in text.values()) + "</p>",
        _figure(
            f"figures/{f13.name}",
            f"Fig. 13: {metric} at optimal guidance against sampling cost, per width: "
            "undistilled (circles, the best sampler at each step count) and consistency-"
            "distilled (squares: lcm at its step counts, ddim at 4); dotted: the undistilled "
            "frontier across widths. Left: normalized cost x steps (the paper's axis); right: "
            "times the UNet evaluations per step (2 with CFG's doubled batch). Error bars: "
            "bootstrap CIs.",
            "distilled vs undistilled at equal sampling cost",
        ),
        _figure(
            f"figures/{f19.name}",
            f"Fig. 19: {metric} of each guided-distillation stage (stage one, then each "
            "progressive halving; ddim_grid, one forward per step) and of its teacher's DDIM "
            "at the same steps, per width.",
            "guided distillation stages per width",
        ),
        "<h3>(a) distilled vs its teacher at 4 steps (A = distilled)</h3>",
        _table(r["a"], cols_a),
        "<h3>(b) smaller undistilled (A) vs larger distilled (B) at no more cost</h3>",
        _table(r["b"], cols_b),
        "<h3>(c) guided stages (A) vs the teacher's DDIM at the same steps (B)</h3>",
        _table(r["c"], cols_c),
        f"<p class='note'>Differences A - B of {_esc(metric)} with paired 95% bootstrap CIs "
        "over the images both cells share; guidance chosen per setting on these same images "
        "for distilled and undistilled alike.</p>",
    ]
