"""The choices every figure and table of one report shares (:class:`Analysis`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from ldmscale.frontier import Comparer, Point, final_rows, optimal_guidance, primary_spacing
from ldmscale.metrics.registry import metric_direction


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


def _direction_word(metric: str) -> str:
    return "lower is better" if metric_direction(metric) == "min" else "higher is better"


def _main_sampler(rows: Sequence[dict]) -> str:
    """DDIM (the paper's default) when present, else the most common sampler."""
    counts = Counter(str(r["sampler"]) for r in rows)
    return "ddim" if "ddim" in counts else counts.most_common(1)[0][0]


def _analysis(rows: Sequence[dict], metric: str, select_by: str | None) -> Analysis:
    return Analysis(metric, select_by, primary_spacing(final_rows(rows)))
