"""The practical verdict: the best configuration within a sampling-cost budget (``best``),
its rivals from other widths, and the budgets merged into spans that share one verdict."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ldmscale.frontier.compare import Comparer
from ldmscale.frontier.optima import optimal_guidance
from ldmscale.frontier.points import _EPS, Point, _model_order
from ldmscale.frontier.rows import FrontierError, final_rows, primary_spacing
from ldmscale.metrics.registry import Direction, metric_direction
from ldmscale.paired import Comparison, RowSource


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
