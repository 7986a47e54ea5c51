"""The report's two verdicts: the paper's (widths at equal sampling cost, per sampler, Fig.
9/11) and the practical one (the best configuration within each budget)."""

from __future__ import annotations

from collections.abc import Sequence

from ldmscale.frontier import budget_verdicts, equal_cost_text, equal_cost_verdicts
from ldmscale.paired import describe_methods
from ldmscale.report.analysis import Analysis, _analysis
from ldmscale.report.markup import _esc, _table
from ldmscale.report.plot import _order
from ldmscale.samplers import sampler_label


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
