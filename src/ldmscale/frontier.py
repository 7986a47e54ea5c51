"""Optimal guidance, the quality-versus-sampling-cost frontier, and "best config under budget B".

Everything here works on the results store's rows (``ResultsStore.rows()``): plain
dicts with ``model, c, params, norm_cost, sampler, steps, guidance, sampling_cost,
metrics: {name: {"value", "lo", "hi", "n"}}``. Conventions:

- **Sampling cost** = normalized cost x sampling steps (the paper's x-axis, Fig. 9-11).
- **Optimal guidance** of a (model, sampler, steps) cell group is the guidance scale
  with the best ``select_by`` metric (FID in the paper; any stored metric here). The
  reported metric may differ from the selecting one.
- **Direction**: lower is better for ``fid*``, ``fd_*``, ``kid*``; higher for
  ``alignment`` and ``clip_score`` (``ldmscale.store.metric_direction``).
- **Uncertainty**: each metric carries a bootstrap confidence interval ``[lo, hi]``
  (over images, computed upstream). Two configurations whose intervals overlap are a
  tie: no winner is declared between them. Without an interval, "no CI" is said and
  the comparison is by point estimate only.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Direction = Literal["min", "max"]

#: Preference order when no metric is named and several are stored equally often.
METRIC_PREFERENCE = ("fid", "fd_probe", "fd_effnet", "kid", "alignment", "clip_score")


class FrontierError(ValueError):
    """Rows that cannot answer the question asked (no such metric, nothing under budget, ...)."""


def metric_direction(name: str) -> Direction:
    """``"min"`` if lower is better (names starting ``fid``, ``fd_``, ``kid``), else ``"max"``
    (``alignment``, ``clip_score``, ...). Defers to ``ldmscale.store.metric_direction``."""
    try:
        from ldmscale.store import metric_direction as store_direction
    except ImportError:  # the same rule, for rows that come without the store module
        return "min" if name.lower().startswith(("fid", "fd_", "kid")) else "max"
    return store_direction(name)


def better(a: float, b: float, direction: Direction) -> bool:
    """True if value ``a`` is strictly better than ``b``."""
    return a < b if direction == "min" else a > b


@dataclass(frozen=True)
class Point:
    """One (model, sampler, steps, guidance) configuration scored on one metric.

    ``sampling_cost`` = norm_cost x steps; ``lo``/``hi`` is the bootstrap CI (None: no CI).
    """

    model: str
    c: int | None
    params: int | None
    norm_cost: float
    sampler: str
    steps: int
    guidance: float
    sampling_cost: float
    metric: str
    value: float
    lo: float | None = None
    hi: float | None = None
    n: int | None = None
    cell_id: str | None = None

    @property
    def has_ci(self) -> bool:
        return self.lo is not None and self.hi is not None

    def overlaps(self, other: Point) -> bool | None:
        """Whether the two CIs overlap; None when either has no CI."""
        if not (self.has_ci and other.has_ci):
            return None
        return self.lo <= other.hi and other.lo <= self.hi

    def label(self) -> str:
        """Short model label: ``c=64`` when the width is known, else the model name."""
        return f"c={self.c}" if self.c is not None else self.model

    def config(self) -> str:
        return f"{self.label()} {self.sampler} {self.steps} steps w={self.guidance:g}"

    def score(self, digits: int = 3) -> str:
        """``12.3 [11.8, 12.9]`` or ``12.3 (no CI)``."""
        v = _fmt(self.value, digits)
        if self.has_ci:
            return f"{v} [{_fmt(self.lo, digits)}, {_fmt(self.hi, digits)}]"
        return f"{v} (no CI)"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fmt(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}g}" if abs(x) < 10**digits else f"{x:.0f}"


def available_metrics(rows: Iterable[dict]) -> Counter:
    """How many rows carry each metric."""
    counts: Counter = Counter()
    for r in rows:
        counts.update((r.get("metrics") or {}).keys())
    return counts


def default_metric(rows: Sequence[dict]) -> str:
    """The metric stored on the most rows (ties: :data:`METRIC_PREFERENCE` order, then name)."""
    counts = available_metrics(rows)
    if not counts:
        raise FrontierError("no row carries any metric: run the sweep (ldmscale sweep) first")
    pref = {m: i for i, m in enumerate(METRIC_PREFERENCE)}
    return min(counts, key=lambda m: (-counts[m], pref.get(m, len(pref)), m))


def _check_metric(rows: Sequence[dict], metric: str) -> None:
    counts = available_metrics(rows)
    if metric not in counts:
        have = ", ".join(sorted(counts)) or "none"
        raise FrontierError(f"metric {metric!r} is not in the results; stored metrics: {have}")


def _num(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def to_point(row: dict, metric: str) -> Point | None:
    """The row scored on ``metric``; None if the row lacks it."""
    m = (row.get("metrics") or {}).get(metric)
    if m is None or _num(m.get("value")) is None:
        return None
    norm_cost = float(row["norm_cost"])
    steps = int(row["steps"])
    cost = row.get("sampling_cost")
    c = row.get("c")
    params = row.get("params")
    return Point(
        model=str(row["model"]),
        c=int(c) if c is not None else None,
        params=int(params) if params is not None else None,
        norm_cost=norm_cost,
        sampler=str(row["sampler"]),
        steps=steps,
        guidance=float(row["guidance"]),
        sampling_cost=float(cost) if cost is not None else norm_cost * steps,
        metric=metric,
        value=float(m["value"]),
        lo=_num(m.get("lo")),
        hi=_num(m.get("hi")),
        n=int(m["n"]) if m.get("n") is not None else None,
        cell_id=row.get("cell_id"),
    )


def train_step_of(row: dict) -> int | None:
    """The training step of a checkpoint evaluation (``train_step`` on the row or in its
    provenance); None for an evaluation of the final model."""
    step = row.get("train_step")
    if step is None:
        step = (row.get("provenance") or {}).get("train_step")
    return int(step) if step is not None else None


def final_rows(rows: Iterable[dict]) -> list[dict]:
    """Rows that evaluate each model's final weights: drops checkpoint evaluations, i.e. rows
    whose ``train_step`` is below the largest one stored for that model (Fig. 3 uses those)."""
    rows = list(rows)
    last: dict[str, int] = {}
    for r in rows:
        step = train_step_of(r)
        if step is not None:
            last[str(r["model"])] = max(step, last.get(str(r["model"]), step))
    return [r for r in rows if train_step_of(r) in (None, last.get(str(r["model"])))]


def _filter(rows: Iterable[dict], samplers: Sequence[str] | None) -> list[dict]:
    rows = final_rows(rows)
    if samplers:
        rows = [r for r in rows if r["sampler"] in set(samplers)]
    return rows


def optimal_guidance(
    rows: Sequence[dict],
    metric: str,
    select_by: str | None = None,
    samplers: Sequence[str] | None = None,
) -> list[Point]:
    """One point per (model, sampler, steps): the guidance with the best ``select_by``
    metric (default: ``metric`` itself), scored on ``metric``.

    Rows of checkpoint evaluations (with a ``train_step``) are ignored. Within a group only
    the rows with the group's largest ``n_images`` compete (an adaptive search also stores
    cheap small-N cells; FD-type metrics are biased by N, so they are not comparable). Ties in
    ``select_by`` go to the smaller guidance scale. Sorted by (model, sampler, steps).
    """
    select_by = select_by or metric
    rows = _filter(rows, samplers)
    _check_metric(rows, metric)
    _check_metric(rows, select_by)
    direction = metric_direction(select_by)
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((str(r["model"]), str(r["sampler"]), int(r["steps"])), []).append(r)
    out = []
    for key in sorted(groups):
        best_sel: Point | None = None
        best_row: dict | None = None
        n_max = max(int(r.get("n_images") or 0) for r in groups[key])
        group = [r for r in groups[key] if int(r.get("n_images") or 0) == n_max]
        for r in sorted(group, key=lambda r: float(r["guidance"])):
            p = to_point(r, select_by)
            if p is None or to_point(r, metric) is None:
                continue
            if best_sel is None or better(p.value, best_sel.value, direction):
                best_sel, best_row = p, r
        if best_row is not None:
            out.append(to_point(best_row, metric))
    return out


def curves(points: Iterable[Point]) -> dict[tuple[str, str], list[Point]]:
    """Group optimal-guidance points into per-(model, sampler) curves sorted by sampling cost."""
    out: dict[tuple[str, str], list[Point]] = {}
    for p in points:
        out.setdefault((p.model, p.sampler), []).append(p)
    for v in out.values():
        v.sort(key=lambda p: (p.sampling_cost, p.steps))
    return dict(sorted(out.items(), key=lambda kv: (_model_order(kv[1][0]), kv[0][1])))


def _model_order(p: Point) -> tuple:
    return (p.c if p.c is not None else math.inf, p.model)


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


@dataclass
class BestResult:
    """The answer to "best configuration with sampling cost <= budget".

    ``winner``: the best point by value. ``runners_up``: other configurations whose CI
    overlaps the winner's (sorted best first) -- while any exist there is no winner, only a
    tie. ``no_ci``: some candidate lacks a CI, so comparisons with it are by point estimate
    only.
    """

    budget: float
    metric: str
    direction: Direction
    winner: Point
    runners_up: list[Point] = field(default_factory=list)
    no_ci: bool = False
    n_candidates: int = 0

    @property
    def decided(self) -> bool:
        """True when no other configuration's CI overlaps the winner's."""
        return not self.runners_up

    @property
    def tied_models(self) -> list[str]:
        """Model labels among the winner and the overlapping runners-up (winner first)."""
        seen: list[str] = []
        for p in [self.winner, *self.runners_up]:
            if p.label() not in seen:
                seen.append(p.label())
        return seen

    @property
    def model_decided(self) -> bool:
        """True when every overlapping configuration uses the winner's model."""
        return len(self.tied_models) == 1

    def summary(self) -> str:
        w = self.winner
        head = f"budget {self.budget:g} ({self.metric}, {'lower' if self.direction == 'min' else 'higher'} is better): "
        if self.decided:
            text = f"best: {w.config()}, cost {w.sampling_cost:.3g}, {self.metric} {w.score()}"
            if self.no_ci:
                text += "; no CI, so this is by point estimate only"
            return head + text
        parts = [f"{p.config()} ({p.score()})" for p in [w, *self.runners_up]]
        text = "tie between " + "; ".join(parts) + " -- their CIs overlap, no winner declared"
        if self.model_decided:
            text += f" (all use {w.label()})"
        return head + text

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget": self.budget,
            "metric": self.metric,
            "direction": self.direction,
            "decided": self.decided,
            "no_ci": self.no_ci,
            "tied_models": self.tied_models,
            "n_candidates": self.n_candidates,
            "winner": self.winner.to_dict(),
            "runners_up": [p.to_dict() for p in self.runners_up],
            "summary": self.summary(),
        }


def best_of(points: Sequence[Point], budget: float) -> BestResult:
    """:func:`best` over already-computed optimal-guidance points."""
    cands = [p for p in points if p.sampling_cost <= budget * (1 + 1e-9)]
    if not cands:
        cheapest = min((p.sampling_cost for p in points), default=None)
        hint = f"; the cheapest configuration costs {cheapest:g}" if cheapest is not None else ""
        raise FrontierError(f"no configuration has sampling cost <= {budget:g}{hint}")
    direction = metric_direction(cands[0].metric)
    sign = 1.0 if direction == "min" else -1.0
    cands.sort(key=lambda p: (sign * p.value, p.sampling_cost, _model_order(p), p.sampler))
    winner, rest = cands[0], cands[1:]
    runners: list[Point] = []
    for p in rest:
        ov = p.overlaps(winner)
        # Without intervals only an exactly equal point estimate counts as a tie.
        if ov or (ov is None and p.value == winner.value):
            runners.append(p)
    no_ci = not all(p.has_ci for p in cands)
    return BestResult(budget, winner.metric, direction, winner, runners, no_ci, len(cands))


def best(
    rows: Sequence[dict],
    budget: float,
    metric: str,
    samplers: Sequence[str] | None = None,
    select_by: str | None = None,
) -> BestResult:
    """Best (model, sampler, steps, guidance) with sampling cost <= ``budget``.

    Candidates are the optimal-guidance points (guidance chosen by ``select_by``,
    default ``metric``). Runners-up are candidates whose CI overlaps the winner's;
    when there are any, the result is a tie (``BestResult.decided`` is False).
    """
    return best_of(optimal_guidance(rows, metric, select_by, samplers), budget)


@dataclass
class VerdictSpan:
    """Budgets from ``lo_budget`` to ``hi_budget`` (sampling cost) that share one model verdict."""

    lo_budget: float
    hi_budget: float
    models: list[str]
    results: list[BestResult]

    @property
    def decided(self) -> bool:
        return len(self.models) == 1

    def text(self) -> str:
        last = self.results[-1]
        rng = (
            f"sampling cost {self.lo_budget:.3g}"
            if self.lo_budget == self.hi_budget
            else f"sampling cost {self.lo_budget:.3g} to {self.hi_budget:.3g}"
        )
        w = last.winner
        if self.decided:
            s = f"Budget {rng}: {self.models[0]} wins (at {last.budget:.3g}: {w.sampler}, {w.steps} steps, w={w.guidance:g}, {w.metric} {w.score()})"
            if last.no_ci:
                s += " -- by point estimate only (no CI)"
            elif not last.decided:
                s += "; other settings of the same model are within its CI"
            return s + "."
        return (
            f"Budget {rng}: tie between {', '.join(self.models)} -- their confidence intervals "
            f"overlap (best at {last.budget:.3g}: {w.config()}, {w.metric} {w.score()})."
        )


def budget_verdicts(
    points: Sequence[Point], budgets: Sequence[float] | None = None
) -> list[VerdictSpan]:
    """Which model wins at each budget (default: every distinct sampling cost), merged into
    spans of consecutive budgets with the same set of tied models."""
    if not points:
        return []
    budgets = sorted(set(budgets if budgets is not None else (p.sampling_cost for p in points)))
    cheapest = min(p.sampling_cost for p in points)
    spans: list[VerdictSpan] = []
    for b in budgets:
        if b < cheapest:
            continue
        r = best_of(points, b)
        models = sorted(r.tied_models, key=lambda lab: _label_order(lab, points))
        if spans and spans[-1].models == models:
            spans[-1].hi_budget = b
            spans[-1].results.append(r)
        else:
            spans.append(VerdictSpan(b, b, models, [r]))
    return spans


def _label_order(label: str, points: Sequence[Point]) -> tuple:
    for p in points:
        if p.label() == label:
            return _model_order(p)
    return (math.inf, label)


def frontier_summary(
    rows: Sequence[dict],
    metric: str,
    select_by: str | None = None,
    samplers: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Everything the ``frontier`` command prints: per-model optimal-guidance curves, the
    Pareto frontier across models, and the per-budget verdicts (JSON-ready)."""
    pts = optimal_guidance(rows, metric, select_by, samplers)
    return {
        "metric": metric,
        "select_by": select_by or metric,
        "direction": metric_direction(metric),
        "curves": [
            {"model": m, "sampler": s, "points": [p.to_dict() for p in ps]}
            for (m, s), ps in curves(pts).items()
        ],
        "frontier": [p.to_dict() for p in pareto_frontier(pts)],
        "verdicts": [
            {
                "lo_budget": v.lo_budget,
                "hi_budget": v.hi_budget,
                "models": v.models,
                "decided": v.decided,
                "text": v.text(),
            }
            for v in budget_verdicts(pts)
        ],
    }


def load_rows(path: str | Path) -> list[dict]:
    """Rows from a results store (SQLite, via ``ldmscale.store.ResultsStore``) or from a
    JSON list / JSON-lines file of row dicts (the same format ``store.rows()`` returns)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"results store not found: {path} (run `ldmscale sweep` first)")
    if path.suffix in (".json", ".jsonl"):
        text = path.read_text()
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        data = json.loads(text)
        if not isinstance(data, list):
            raise FrontierError(f"{path}: expected a JSON list of result rows")
        return data
    try:
        from ldmscale.store import ResultsStore
    except ImportError as e:
        raise FrontierError(
            f"cannot read {path}: ldmscale.store is not available; pass a .json/.jsonl rows file"
        ) from e
    store = ResultsStore(path)
    try:
        return store.rows()
    finally:
        close = getattr(store, "close", None)
        if close:
            close()
