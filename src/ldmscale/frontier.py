"""Optimal guidance, the quality-versus-sampling-cost frontier, and the two verdicts.

Everything here works on the results store's rows (``ResultsStore.rows()``): plain dicts with
``model, model_hash, c, params, norm_cost, sampler, steps, guidance, sampling_cost,
n_images, metrics: {name: {"value", "lo", "hi", "n"}}`` and, from newer sweeps,
``timestep_spacing, seed0, train_step, train_compute, train_seed``. Conventions:

- **Model identity** is the weight hash ``model_hash`` (the model name when a row has none):
  two training seeds of one width are two models, labelled ``c=<c> seed <train_seed>``.
- **Timestep spacing** (``timestep_spacing``, old rows: ``leading``) is part of a curve's
  identity: one curve never mixes spacings. The verdicts use the *primary spacing* (the most
  stored one, or a parameter); other spacings are separate, labelled series.
- **Sampling cost** = normalized cost x sampling steps (the paper's x-axis, Fig. 9-11).
- **Optimal guidance** of a (model, sampler, spacing, steps) group is the guidance scale with
  the best ``select_by`` metric on the rows of seed set ``select_seed0`` (``seed0``; old rows:
  0). When the same setting was also stored on seed set ``report_seed0``, the optimum's value
  and CI come from that row (``Point.fresh = True``): chosen on one set of images, reported
  on another, so the value carries no winner's-curse bias. Otherwise ``fresh = False``: the
  value was chosen and reported on the same images, and is optimistic.
- **Edge flags**: ``Point.at_edge`` is ``"low"``/``"high"`` when the optimum is the smallest
  or largest guidance of its group's grid: the true optimum may lie outside the grid.
- **Direction**: lower is better for ``fid``, ``fd_*``, ``kid``; higher for ``alignment``
  and ``clip_score``: the metric registry's (:func:`ldmscale.metrics.registry.metric_direction`;
  a name it does not know is an error listing the known ones).
- **Winners** are decided by a paired bootstrap of the difference over the images both cells
  share (:mod:`ldmscale.paired`); a tie stays a tie. Without per-image rows the comparison
  falls back to the overlap of the stored CIs, and says that this is the weaker test.
- **Checkpoint rows** (``train_step`` below the largest stored for the same training run) are
  used for Fig. 3 only (:func:`final_rows`).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from ldmscale import cost
from ldmscale.metrics.registry import Direction
from ldmscale.metrics.registry import metric_direction as metric_direction  # re-export
from ldmscale.paired import Comparison, RowSource, ci_overlap_outcome, compare_rows

#: Preference order when no metric is named and several are stored equally often.
METRIC_PREFERENCE = ("fid", "fd_probe", "fd_effnet", "kid", "alignment", "clip_score")

#: The spacing of rows stored before ``timestep_spacing`` was a sweep field.
OLD_SPACING = "leading"

#: Tolerance for "cost <= budget" comparisons (relative).
_EPS = 1e-9


class FrontierError(ValueError):
    """Rows that cannot answer the question asked (no such metric, nothing under budget, ...)."""


def better(a: float, b: float, direction: Direction) -> bool:
    """True if value ``a`` is strictly better than ``b``."""
    return a < b if direction == "min" else a > b


# ----------------------------------------------------------------------------- row fields


def model_key(row: dict) -> str:
    """A row's model identity: its weight hash ``model_hash``, else its model name."""
    return str(row.get("model_hash") or row["model"])


def spacing_of(row: dict) -> str:
    """The row's timestep spacing (``timestep_spacing``, or its provenance's sampler config);
    ``leading`` for rows from before spacing was stored."""
    s = row.get("timestep_spacing")
    if s is None:
        s = ((row.get("provenance") or {}).get("sampler_config") or {}).get("timestep_spacing")
    return str(s) if s else OLD_SPACING


def seed0_of(row: dict) -> int:
    """The first seed of the row's seed set (``seed0``; 0 for old rows)."""
    s = row.get("seed0")
    return int(s) if s is not None else 0


def train_step_of(row: dict) -> int | None:
    """The training step of a checkpoint evaluation (``train_step`` on the row or in its
    provenance); None for an evaluation of a model without one."""
    step = row.get("train_step")
    if step is None:
        step = (row.get("provenance") or {}).get("train_step")
    return int(step) if step is not None else None


def train_seed_of(row: dict) -> int | None:
    """The training seed of the row's model (``train_seed``, or in provenance); None if unknown."""
    s = row.get("train_seed")
    if s is None:
        s = (row.get("provenance") or {}).get("train_seed")
    return int(s) if s is not None else None


def _run_dir(model_path: Any) -> str | None:
    """The training run folder of a model path: ``<run>/model``, ``<run>/checkpoints/<x>`` and
    ``<run>/evals/step-N`` (the layout ``ldmscale train`` writes) all give ``<run>``."""
    if not model_path:
        return None
    p = Path(str(model_path))
    parts = p.parts
    for sub in ("checkpoints", "evals"):
        if sub in parts[:-1]:
            return str(Path(*parts[: parts.index(sub)]))
    return str(p.parent) if p.name == "model" else str(p)


def run_key(row: dict) -> tuple:
    """The training run a row's model comes from: ``(run, c, train_seed)`` where ``run`` is the
    row's ``train_run`` (or the ``run`` its model config records), else the run folder of
    ``model_path``, else the model name. The model name alone is not enough: two seeds of one
    width may share it."""
    cfg = (row.get("provenance") or {}).get("model_config") or {}
    run = (
        row.get("train_run")
        or (cfg.get("run") if isinstance(cfg, dict) else None)
        or _run_dir(row.get("model_path"))
        or str(row["model"])
    )
    return (str(run), row.get("c"), train_seed_of(row))


def final_rows(rows: Iterable[dict]) -> list[dict]:
    """Rows that evaluate each run's final weights: drops checkpoint rows, i.e. rows whose
    ``train_step`` is below the largest one stored for the same run (:func:`run_key`)."""
    rows = list(rows)
    last: dict[tuple, int] = {}
    for r in rows:
        step = train_step_of(r)
        if step is not None:
            k = run_key(r)
            last[k] = max(step, last.get(k, step))
    return [r for r in rows if train_step_of(r) in (None, last.get(run_key(r)))]


def checkpoint_rows(rows: Iterable[dict]) -> list[dict]:
    """Rows of scored checkpoints: every row with a ``train_step`` (the final step included)."""
    return [r for r in rows if train_step_of(r) is not None]


def primary_spacing(rows: Sequence[dict]) -> str:
    """The most stored timestep spacing (ties: ``trailing``, then alphabetical)."""
    counts = Counter(spacing_of(r) for r in rows)
    if not counts:
        raise FrontierError("no rows")
    return min(counts, key=lambda s: (-counts[s], s != "trailing", s))


def seed_sets(rows: Iterable[dict]) -> Counter:
    """How many rows each seed set (``seed0``) has."""
    return Counter(seed0_of(r) for r in rows)


def default_report_seed0(rows: Sequence[dict], select_seed0: int = 0) -> int | None:
    """The fresh seed set to report optima on: the most stored ``seed0`` other than
    ``select_seed0`` among final rows (ties: the smallest), or None when there is none."""
    counts = seed_sets(final_rows(rows))
    counts.pop(select_seed0, None)
    if not counts:
        return None
    return min(counts, key=lambda s: (-counts[s], s))


# ----------------------------------------------------------------------------- points


@dataclass(frozen=True)
class Point:
    """One (model, sampler, spacing, steps, guidance) configuration scored on one metric.

    ``sampling_cost`` = norm_cost x steps; ``lo``/``hi`` is the bootstrap CI (None: no CI).
    ``model_hash`` is the model's identity; ``name`` its display label (set by
    :func:`optimal_guidance`: ``c=8``, or ``c=8 seed 1`` when two models share a width).
    For an optimal-guidance point: ``fresh`` tells whether value/CI come from a seed set other
    than the one the guidance was chosen on (``seed0`` is the reported row's seed set,
    ``select_cell_id`` the row that chose it); ``at_edge`` is ``"low"``/``"high"`` when the
    guidance is the smallest/largest of ``grid`` (the group's guidance grid).
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
    model_hash: str | None = None
    train_seed: int | None = None
    spacing: str = OLD_SPACING
    seed0: int = 0
    fresh: bool = False
    at_edge: Literal["low", "high"] | None = None
    grid: tuple[float, ...] = ()
    select_cell_id: str | None = None
    name: str | None = None

    @property
    def has_ci(self) -> bool:
        return self.lo is not None and self.hi is not None

    @property
    def model_id(self) -> str:
        """The model's identity (weight hash, else name)."""
        return self.model_hash or self.model

    def overlaps(self, other: Point) -> bool | None:
        """Whether the two CIs overlap; None when either has no CI."""
        if not (self.has_ci and other.has_ci):
            return None
        return self.lo <= other.hi and other.lo <= self.hi

    def label(self) -> str:
        """Short model label: ``name`` when set, else ``c=64`` (the model name without a width)."""
        if self.name:
            return self.name
        return f"c={self.c}" if self.c is not None else self.model

    def width(self) -> str:
        """The width label alone (``c=64``), shared by replicates of one width."""
        return f"c={self.c}" if self.c is not None else self.model

    def config(self) -> str:
        return f"{self.label()} {self.sampler} {self.steps} steps w={self.guidance:g}"

    def score(self, digits: int = 3) -> str:
        """``12.3 [11.8, 12.9]`` or ``12.3 (no CI)``."""
        v = _fmt(self.value, digits)
        if self.has_ci:
            return f"{v} [{_fmt(self.lo, digits)}, {_fmt(self.hi, digits)}]"
        return f"{v} (no CI)"

    def flags(self) -> str:
        """``guidance at the grid's low edge``, ``not on fresh seeds`` ... ('' when none)."""
        out = []
        if self.at_edge:
            out.append(f"guidance at the grid's {self.at_edge} edge")
        if not self.fresh:
            out.append("chosen and reported on the same images (biased)")
        return "; ".join(out)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["grid"] = list(self.grid)
        d["label"] = self.label()
        return d


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
    stored_cost = row.get("sampling_cost")
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
        sampling_cost=(
            float(stored_cost) if stored_cost is not None else cost.sampling_cost(norm_cost, steps)
        ),
        metric=metric,
        value=float(m["value"]),
        lo=_num(m.get("lo")),
        hi=_num(m.get("hi")),
        n=int(m["n"]) if m.get("n") is not None else None,
        cell_id=row.get("cell_id"),
        model_hash=row.get("model_hash"),
        train_seed=train_seed_of(row),
        spacing=spacing_of(row),
        seed0=seed0_of(row),
    )


def assign_labels(points: Sequence[Point]) -> list[Point]:
    """Points with ``name`` set: ``c=<c>`` when one model has that width, ``c=<c> seed <s>``
    (or ``c=<c> #<hash>`` without a training seed) when several models share it."""
    by_width: dict[str, set[str]] = {}
    for p in points:
        by_width.setdefault(p.width(), set()).add(p.model_id)
    out = []
    for p in points:
        name = p.width()
        if len(by_width[name]) > 1:
            name += f" seed {p.train_seed}" if p.train_seed is not None else f" #{p.model_id[:6]}"
        out.append(replace(p, name=name))
    return out


def _setting_key(row: dict) -> tuple:
    return (model_key(row), str(row["sampler"]), spacing_of(row), int(row["steps"]))


def _filter(
    rows: Iterable[dict], samplers: Sequence[str] | None, spacing: str | None = None
) -> list[dict]:
    rows = final_rows(rows)
    if samplers:
        rows = [r for r in rows if r["sampler"] in set(samplers)]
    if spacing is not None:
        rows = [r for r in rows if spacing_of(r) == spacing]
    return rows


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


def _model_order(p: Point) -> tuple:
    return (
        p.c if p.c is not None else math.inf,
        p.train_seed if p.train_seed is not None else -1,
        p.model_id,
    )


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


# ----------------------------------------------------------------------------- comparisons


class Comparer:
    """Compares two points on their metric: a paired bootstrap over the images their reported
    cells share when a :class:`~ldmscale.paired.RowSource` finds both cells' per-image rows,
    else the overlap of their CIs (the weaker test). Results are cached per pair of cells."""

    def __init__(
        self,
        rows: Sequence[dict],
        source: RowSource | None = None,
        n_boot: int = 200,
        level: float = 0.95,
        seed: int = 0,
    ) -> None:
        self.by_id = {r.get("cell_id"): r for r in rows if r.get("cell_id")}
        self.source = source
        self.n_boot, self.level, self.seed = n_boot, level, seed
        self._cache: dict[tuple, Comparison] = {}
        self.done: list[Comparison] = []

    def __call__(self, a: Point, b: Point) -> Comparison:
        """Compare A with B (``outcome`` ``"a"``: A is better)."""
        key = (a.cell_id, b.cell_id, a.metric)
        if key in self._cache:
            return self._cache[key]
        direction = metric_direction(a.metric)
        ra, rb = self.by_id.get(a.cell_id), self.by_id.get(b.cell_id)
        if ra is not None and rb is not None:
            res = compare_rows(
                ra, rb, a.metric, direction, self.source, self.n_boot, self.level, self.seed
            )
        else:
            res = ci_overlap_outcome((a.value, a.lo, a.hi), (b.value, b.lo, b.hi), direction)
        self._cache[key] = res
        self.done.append(res)
        return res


@dataclass
class Rival:
    """The best candidate of another width under a budget, and its comparison with the winner
    (``comparison.outcome == "a"``: the winner beats it)."""

    point: Point
    comparison: Comparison

    @property
    def tied(self) -> bool:
        return self.comparison.outcome != "a"


@dataclass
class BestResult:
    """The answer to "best configuration with sampling cost <= budget".

    ``winner``: the best point by value. ``rivals``: the best candidate of each other width,
    best first (``runner_up`` is the first), each compared with the winner (paired when the
    rows allow). ``decided``: the winner beats every rival; otherwise the widths that it does
    not beat are tied with it (``tied_models``).
    """

    budget: float
    metric: str
    direction: Direction
    winner: Point
    rivals: list[Rival] = field(default_factory=list)
    n_candidates: int = 0
    spacing: str | None = None

    @property
    def runner_up(self) -> Rival | None:
        return self.rivals[0] if self.rivals else None

    @property
    def decided(self) -> bool:
        """True when the winner beats the best candidate of every other width."""
        return not any(r.tied for r in self.rivals)

    @property
    def no_ci(self) -> bool:
        """Some comparison was by point estimate only (no rows and no CI)."""
        return any(r.comparison.method == "point" for r in self.rivals)

    @property
    def tied_models(self) -> list[str]:
        """Labels of the winner and of every rival it does not beat (winner first)."""
        return [self.winner.label()] + [r.point.label() for r in self.rivals if r.tied]

    @property
    def model_decided(self) -> bool:
        return self.decided

    def summary(self) -> str:
        w = self.winner
        sp = f"; {self.spacing} spacing" if self.spacing else ""
        word = "lower" if self.direction == "min" else "higher"
        head = f"budget {self.budget:g} ({self.metric}, {word} is better{sp}): "
        text = f"best: {w.config()}, cost {w.sampling_cost:.3g}, {self.metric} {w.score()}"
        if w.flags():
            text += f" [{w.flags()}]"
        ru = self.runner_up
        if ru is None:
            return head + text + "; no other width has a configuration within the budget"
        d = ru.comparison
        text += (
            f"; runner-up from another width: {ru.point.config()}, cost "
            f"{ru.point.sampling_cost:.3g}, {self.metric} {ru.point.score()}; difference "
            f"{d.ci_text()}"
        )
        if self.decided:
            text += f" -- {w.label()} wins"
        else:
            text += f" -- tie between {', '.join(self.tied_models)}, no winner declared"
        return head + text

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget": self.budget,
            "metric": self.metric,
            "direction": self.direction,
            "spacing": self.spacing,
            "decided": self.decided,
            "no_ci": self.no_ci,
            "tied_models": self.tied_models,
            "n_candidates": self.n_candidates,
            "winner": self.winner.to_dict(),
            "rivals": [
                {"point": r.point.to_dict(), "comparison": r.comparison.to_dict()}
                for r in self.rivals
            ],
            "summary": self.summary(),
        }


def best_of(points: Sequence[Point], budget: float, comparer: Comparer | None = None) -> BestResult:
    """:func:`best` over already-computed optimal-guidance points (``comparer``: how two points
    are compared; default: CI overlap, since bare points carry no per-image rows)."""
    cands = [p for p in points if p.sampling_cost <= budget * (1 + _EPS)]
    if not cands:
        cheapest = min((p.sampling_cost for p in points), default=None)
        hint = f"; the cheapest configuration costs {cheapest:g}" if cheapest is not None else ""
        raise FrontierError(f"no configuration has sampling cost <= {budget:g}{hint}")
    comparer = comparer or Comparer([])
    direction = metric_direction(cands[0].metric)
    sign = 1.0 if direction == "min" else -1.0
    cands.sort(key=lambda p: (sign * p.value, p.sampling_cost, _model_order(p), p.sampler))
    winner = cands[0]
    rivals: list[Rival] = []
    seen = {winner.width()}
    for p in cands[1:]:
        if p.width() in seen:
            continue
        seen.add(p.width())
        rivals.append(Rival(p, comparer(winner, p)))
    spacings = {p.spacing for p in cands}
    spacing = spacings.pop() if len(spacings) == 1 else None
    return BestResult(budget, winner.metric, direction, winner, rivals, len(cands), spacing)


def best(
    rows: Sequence[dict],
    budget: float,
    metric: str,
    samplers: Sequence[str] | None = None,
    select_by: str | None = None,
    spacing: str | None = None,
    select_seed0: int = 0,
    report_seed0: int | None = None,
    source: RowSource | None = None,
    n_boot: int = 200,
) -> BestResult:
    """Best (width, sampler, steps, guidance) with sampling cost <= ``budget``, at the primary
    spacing (default: the most stored), its runner-up from another width, and the paired test
    between them (CI overlap when ``source`` finds no per-image rows)."""
    spacing = spacing or primary_spacing(final_rows(rows))
    pts = optimal_guidance(rows, metric, select_by, samplers, spacing, select_seed0, report_seed0)
    return best_of(pts, budget, Comparer(rows, source, n_boot))


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
        ru = last.runner_up
        vs = f"; vs {ru.point.label()}: {ru.comparison.ci_text()}" if ru else ""
        flag = f" [{w.flags()}]" if w.flags() else ""
        if self.decided:
            s = (
                f"Budget {rng}: {self.models[0]} wins (at {last.budget:.3g}: {w.sampler}, "
                f"{w.steps} steps, w={w.guidance:g}, {w.metric} {w.score()}{flag}{vs})"
            )
            return s + "."
        return (
            f"Budget {rng}: tie between {', '.join(self.models)} -- the difference's CI "
            f"includes 0 (best at {last.budget:.3g}: {w.config()}, {w.metric} {w.score()}"
            f"{flag}{vs})."
        )


def budget_verdicts(
    points: Sequence[Point],
    budgets: Sequence[float] | None = None,
    comparer: Comparer | None = None,
) -> list[VerdictSpan]:
    """Which width wins at each budget (default: every distinct sampling cost), merged into
    spans of consecutive budgets with the same set of tied models."""
    if not points:
        return []
    comparer = comparer or Comparer([])
    budgets = sorted(set(budgets if budgets is not None else (p.sampling_cost for p in points)))
    cheapest = min(p.sampling_cost for p in points)
    spans: list[VerdictSpan] = []
    for b in budgets:
        if b < cheapest:
            continue
        r = best_of(points, b, comparer)
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
    return (math.inf, -1, label)


# ----------------------------------------------------------------------------- equal cost


@dataclass
class Matched:
    """One row of the paper's verdict (Fig. 9/11): within one sampler, the larger width at
    ``larger.steps`` against the smaller width at the step count whose sampling cost is the
    nearest to, and not above, the larger's. ``cost_ratio`` = smaller cost / larger cost."""

    sampler: str
    larger: Point
    smaller: Point
    comparison: Comparison

    @property
    def budget(self) -> float:
        return self.larger.sampling_cost

    @property
    def cost_ratio(self) -> float:
        return self.smaller.sampling_cost / self.larger.sampling_cost

    @property
    def winner(self) -> str | None:
        """The winning width's label (``comparison`` is larger vs smaller), None for a tie."""
        o = self.comparison.outcome
        return self.larger.label() if o == "a" else self.smaller.label() if o == "b" else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "sampler": self.sampler,
            "budget": self.budget,
            "larger": self.larger.to_dict(),
            "smaller": self.smaller.to_dict(),
            "cost_ratio": self.cost_ratio,
            "winner": self.winner,
            "comparison": self.comparison.to_dict(),
        }


def equal_cost_verdicts(
    points: Sequence[Point], comparer: Comparer | None = None
) -> dict[str, list[Matched]]:
    """The paper's verdict: per sampler, for each pair of widths and each step count ``s`` of
    the larger, the larger at ``s`` against the smaller at the step count whose cost is
    nearest to and not above the larger's cost (none: that pair is skipped at ``s``).

    The comparison is paired (larger minus smaller) when the rows allow. Costs of different
    widths rarely coincide, so each row reports the cost ratio matched; the smaller width is
    never given more compute than the larger. Replicates of one width are not compared with
    each other. Pass points of one spacing (the verdicts' primary spacing).
    """
    comparer = comparer or Comparer([])
    out: dict[str, list[Matched]] = {}
    for sampler in sorted({p.sampler for p in points}):
        pts = [p for p in points if p.sampler == sampler]
        models: dict[str, list[Point]] = {}
        for p in pts:
            models.setdefault(p.model_id, []).append(p)
        ids = sorted(models, key=lambda m: _model_order(models[m][0]))
        rows: list[Matched] = []
        for i, big_id in enumerate(ids):
            big_pts = sorted(models[big_id], key=lambda p: p.sampling_cost)
            for small_id in ids[:i]:
                small_pts = models[small_id]
                if small_pts[0].width() == big_pts[0].width():
                    continue
                if small_pts[0].norm_cost >= big_pts[0].norm_cost:
                    continue
                for big in big_pts:
                    under = [
                        p for p in small_pts if p.sampling_cost <= big.sampling_cost * (1 + _EPS)
                    ]
                    if not under:
                        continue
                    small = max(under, key=lambda p: (p.sampling_cost, -p.steps))
                    rows.append(Matched(sampler, big, small, comparer(big, small)))
        rows.sort(key=lambda m: (m.budget, _model_order(m.larger), _model_order(m.smaller)))
        if rows:
            out[sampler] = rows
    return out


def equal_cost_text(sampler: str, matched: Sequence[Matched]) -> str:
    """One sentence per sampler: how often the larger width, the smaller, or neither wins."""
    big = sum(m.comparison.outcome == "a" for m in matched)
    small = sum(m.comparison.outcome == "b" for m in matched)
    tie = len(matched) - big - small
    return (
        f"{sampler}: of {len(matched)} equal-cost comparisons, the larger width wins {big}, "
        f"the smaller wins {small}, {tie} are ties."
    )


# ----------------------------------------------------------------------------- floors


FLOOR_KINDS = ("real", "reconstruction")


def load_floors(path: str | Path) -> dict[str, dict[str, dict[str, float]]]:
    """Read ``floors.json``: ``{metric: {"real": {"value", "lo", "hi", "n"},
    "reconstruction": {...}}}`` (the best value a model could reach: real images of the cells' prompts,
    and on autoencoder reconstructions, scored like the cells). Raises on a malformed file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"floors file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise FrontierError(f"{path}: not JSON ({e})") from e
    return check_floors(data, str(path))


def check_floors(data: Any, where: str = "floors") -> dict[str, dict[str, dict[str, float]]]:
    """Validate a floors mapping (see :func:`load_floors`); returns it with float values."""
    if not isinstance(data, dict):
        raise FrontierError(f"{where}: expected {{metric: {{kind: {{value, lo, hi, n}}}}}}")
    out: dict[str, dict[str, dict[str, float]]] = {}
    for metric, kinds in data.items():
        if metric == "meta":  # what produced the floors (ldmscale.floors), not a metric
            continue
        if not isinstance(kinds, dict):
            raise FrontierError(f"{where}: {metric!r} must map floor kinds to values")
        out[metric] = {}
        for kind, v in kinds.items():
            if not isinstance(v, dict) or _num(v.get("value")) is None:
                raise FrontierError(f"{where}: {metric}.{kind} needs a numeric 'value'")
            out[metric][kind] = {
                k: (float(v[k]) if k != "n" else int(v[k]))
                for k in ("value", "lo", "hi", "n")
                if v.get(k) is not None
            }
    return out


def floor_items(floors: dict | None, metric: str) -> list[tuple[str, dict[str, float]]]:
    """The floors of ``metric`` as ``[(kind, {"value", "lo", "hi", "n"})]`` (real first)."""
    kinds = (floors or {}).get(metric) or {}
    order = {k: i for i, k in enumerate(FLOOR_KINDS)}
    return sorted(kinds.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))


def floor_text(kind: str, f: dict[str, float]) -> str:
    """``real images: 1.23 [1.1, 1.4] (n=256)``."""
    name = {"real": "real images", "reconstruction": "autoencoder reconstructions"}.get(kind, kind)
    s = f"{name}: {_fmt(f['value'])}"
    if f.get("lo") is not None and f.get("hi") is not None:
        s += f" [{_fmt(f['lo'])}, {_fmt(f['hi'])}]"
    if f.get("n") is not None:
        s += f" (n={int(f['n'])})"
    return s


# ----------------------------------------------------------------------------- Table 1


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


# ----------------------------------------------------------------------------- summary


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
