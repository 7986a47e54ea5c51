"""Adaptive guidance search: each (model, sampler, steps) group's best CFG scale with far fewer
images than the full grid.

Algorithm (successive halving over image counts, restricted to contiguous windows): the
quality-vs-guidance curve is roughly unimodal (too little guidance: incoherent images; too
much: saturated ones), so the optimum of a sorted guidance grid lies in a contiguous run of
it. Round 0 evaluates all ``K`` grid scales with ``n_0`` images each; every round then keeps
the contiguous window of ``ceil(keep * m)`` of its ``m`` candidates whose summed score is best
(a window sum is a local average, much less noisy than one point), and doubles the images,
until one candidate is left. Image counts are scheduled so that the last evaluated round uses
``n_images / 2``; with K = 8 and keep = 1/2 the rounds are 8 x N/8, 4 x N/4, 2 x N/2 images,
i.e. 3N = 37.5 % of the grid's 8N. ``confirm=True`` also evaluates the winner at the full
``n_images`` (+N, 50 % in total) so it has a full-size row in the store.

Every evaluated cell is written to the results store with its own ``n_images`` (the cells of a
smaller N use the first ``n`` prompts and seeds of the sweep), so a killed search resumes from
the store like a sweep, and its cells are ordinary rows for the frontier.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ldmscale.config import Config, ConfigError
from ldmscale.store import ResultsStore, metric_direction
from ldmscale.sweep import Evaluator, SweepConfig, SweepError, plan_sweep, run_cells


@dataclass
class AdaptiveConfig(Config):
    """metric: the metric optimized (default: the sweep's first metric; direction from its name).
    keep: fraction of candidates kept per round (a contiguous window). n_min: smallest image
    count evaluated (images per cell never go below it). confirm: evaluate the winner at the
    sweep's full ``n_images``."""

    metric: str | None = None
    keep: float = 0.5
    n_min: int = 8
    confirm: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.keep < 1:
            raise ConfigError(f"AdaptiveConfig.keep must be in (0, 1), got {self.keep}")
        if self.n_min < 1:
            raise ConfigError(f"AdaptiveConfig.n_min must be >= 1, got {self.n_min}")


def schedule(k: int, n_images: int, keep: float = 0.5, n_min: int = 8) -> list[tuple[int, int]]:
    """``[(candidates, images per candidate), ...]`` for each evaluated round of a grid of ``k``.

    The last round uses ``n_images / 2``; earlier rounds halve that per round back to the first,
    never below ``n_min`` (nor above ``n_images``).
    """
    sizes = [k]
    while sizes[-1] > 1:
        sizes.append(max(1, math.ceil(sizes[-1] * keep)))
    rounds = sizes[:-1] or [1]
    last = len(rounds) - 1
    return [
        (m, min(n_images, max(n_min, n_images // 2 ** (last - r + 1))))
        for r, m in enumerate(rounds)
    ]


def best_window(scores: Sequence[float], width: int) -> int:
    """Start index of the contiguous window of ``width`` with the smallest score sum (first on ties)."""
    sums = [sum(scores[i : i + width]) for i in range(len(scores) - width + 1)]
    return min(range(len(sums)), key=lambda i: sums[i])


@dataclass
class GroupSearch:
    """The search state of one group over a sorted guidance grid (lower score = better).

    Drive it with ``requests()`` -> evaluate each (guidance, n) -> ``tell(scores)``, until
    ``done``; then ``choice`` is the selected guidance and ``images`` the images spent.
    """

    grid: list[float]
    n_images: int
    keep: float = 0.5
    n_min: int = 8
    candidates: list[float] = field(init=False)
    round: int = field(init=False, default=0)
    images: int = field(init=False, default=0)
    trace: list[dict[str, Any]] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.grid = sorted(float(g) for g in self.grid)
        if not self.grid:
            raise SweepError("adaptive search needs at least one guidance scale")
        self.candidates = list(self.grid)
        self._schedule = schedule(len(self.grid), self.n_images, self.keep, self.n_min)

    @property
    def done(self) -> bool:
        return len(self.candidates) == 1 and (len(self.grid) > 1 or self.round > 0)

    @property
    def choice(self) -> float:
        if not self.done:
            raise SweepError("the search has not finished")
        return self.candidates[0]

    @property
    def n_now(self) -> int:
        return self._schedule[min(self.round, len(self._schedule) - 1)][1]

    def requests(self) -> list[tuple[float, int]]:
        """The (guidance, n_images) evaluations this round needs (empty once done)."""
        return [] if self.done else [(g, self.n_now) for g in self.candidates]

    def tell(self, scores: Sequence[float]) -> None:
        """Scores of this round's requests, in order, lower = better."""
        if len(scores) != len(self.candidates):
            raise SweepError(f"expected {len(self.candidates)} scores, got {len(scores)}")
        n = self.n_now
        self.images += n * len(self.candidates)
        self.trace.append(
            {"n": n, "guidance": list(self.candidates), "scores": [float(s) for s in scores]}
        )
        width = max(1, math.ceil(len(self.candidates) * self.keep))
        start = best_window(self.pooled_scores(), width)
        self.candidates = self.candidates[start : start + width]
        self.round += 1

    def pooled_scores(self) -> list[float]:
        """Each current candidate's score pooled over every round that evaluated it.

        Per round, scores are centred on that round's mean over the current candidates (which
        cancels the small-N bias that FID-like metrics share across a round), then averaged
        with weights n (inverse variance): later rounds count more, earlier ones still help.
        """
        total = [0.0] * len(self.candidates)
        weight = 0.0
        for t in self.trace:
            vals = [t["scores"][t["guidance"].index(g)] for g in self.candidates]
            mean = sum(vals) / len(vals)
            for i, v in enumerate(vals):
                total[i] += t["n"] * (v - mean)
            weight += t["n"]
        return [v / weight for v in total]


def search_guidance(
    grid: Sequence[float],
    score: Callable[[float, int], float],
    n_images: int,
    keep: float = 0.5,
    n_min: int = 8,
) -> GroupSearch:
    """Run one group's search with ``score(guidance, n) -> float`` (lower = better)."""
    s = GroupSearch(list(grid), n_images, keep, n_min)
    while not s.done:
        s.tell([score(g, n) for g, n in s.requests()])
    return s


@dataclass
class AdaptiveResult:
    """choices: one dict per group (model, model_hash, sampler, steps, guidance, value,
    n_images, trace). images: images spent (evaluated cells' n summed, including cells found
    already stored); grid_images: what the full grid would spend; computed: cells computed now."""

    choices: list[dict[str, Any]]
    images: int
    grid_images: int
    computed: int

    @property
    def fraction(self) -> float:
        return self.images / self.grid_images if self.grid_images else 0.0


def adaptive_search(
    cfg: SweepConfig,
    store: ResultsStore,
    evaluate: Evaluator | None = None,
    adaptive: AdaptiveConfig | None = None,
    progress: bool = True,
) -> AdaptiveResult:
    """Find each group's best guidance over ``cfg.guidance`` with the adaptive search.

    All groups advance in lockstep, one round at a time, so each round's cells go to the
    executor (serial or Ray) together. Every evaluated cell is written to ``store``.
    """
    adaptive = adaptive or AdaptiveConfig()
    metric = adaptive.metric or (cfg.metrics[0] if cfg.metrics else None)
    if metric is None or metric not in cfg.metrics:
        raise SweepError(
            f"adaptive metric {metric!r} is not among the sweep's metrics {list(cfg.metrics)}"
        )
    sign = 1.0 if metric_direction(metric) == "min" else -1.0
    plan = plan_sweep(cfg)
    ctx = plan.context
    groups: dict[tuple, list] = {}
    for cell in plan.cells:  # full-N cells: use them only for the group list and the grid
        groups.setdefault(cell.group, []).append(cell)
    searches = {
        key: (
            cells[0],
            GroupSearch([c.guidance for c in cells], cfg.n_images, adaptive.keep, adaptive.n_min),
        )
        for key, cells in groups.items()
    }
    computed = 0
    rnd = 0
    while True:
        requests = {
            key: [ctx.cell(proto.model, proto.sampler, proto.steps, g, n) for g, n in s.requests()]
            for key, (proto, s) in searches.items()
            if not s.done
        }
        if not requests:
            break
        all_cells = [c for cells in requests.values() for c in cells]
        summary = run_cells(
            all_cells,
            store,
            evaluate,
            cfg.executor,
            cfg.address,
            cfg.num_cpus,
            progress,
            desc=f"adaptive round {rnd}",
        )
        computed += summary.computed
        for key, cells in requests.items():
            scores = [sign * _metric_value(store, c.cell_id, metric) for c in cells]
            searches[key][1].tell(scores)
        rnd += 1
    choices = []
    images = 0
    for proto, s in searches.values():
        g = s.choice
        last = s.trace[-1]
        value = last["scores"][last["guidance"].index(g)] * sign if g in last["guidance"] else None
        n_used, spent = last["n"], s.images
        if adaptive.confirm and n_used < cfg.n_images:
            cell = ctx.cell(proto.model, proto.sampler, proto.steps, g, cfg.n_images)
            run = run_cells(
                [cell], store, evaluate, cfg.executor, cfg.address, cfg.num_cpus, progress=False
            )
            computed += run.computed
            value, n_used = _metric_value(store, cell.cell_id, metric), cfg.n_images
            spent += cfg.n_images
        images += spent
        choices.append(
            {
                "model": proto.model.name,
                "model_hash": proto.model.hash,
                "sampler": proto.sampler,
                "steps": proto.steps,
                "guidance": g,
                "metric": metric,
                "value": value,
                "n_images": n_used,
                "images": spent,
                "trace": s.trace,
            }
        )
    grid_images = sum(len(cells) * cfg.n_images for cells in groups.values())
    return AdaptiveResult(choices, images, grid_images, computed)


def _metric_value(store: ResultsStore, cell_id: str, metric: str) -> float:
    row = store.get(cell_id)
    if row is None or metric not in row["metrics"]:
        raise SweepError(f"cell {cell_id} has no stored value for metric {metric!r}")
    return float(row["metrics"][metric]["value"])
