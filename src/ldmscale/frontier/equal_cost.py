"""The paper's verdict (Fig. 9/11): per sampler, each pair of widths compared at equal
sampling cost, the smaller width never given more compute than the larger."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ldmscale.frontier.compare import Comparer
from ldmscale.frontier.points import _EPS, Point, _model_order
from ldmscale.paired import Comparison


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
