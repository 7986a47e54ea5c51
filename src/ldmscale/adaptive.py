"""Adaptive guidance search: each (model, sampler, steps) group's best CFG scale with far fewer
images than the full grid.

Algorithm (successive halving over image counts, restricted to contiguous windows, with image
reuse): the quality-vs-guidance curve is roughly unimodal (too little guidance: incoherent
images; too much: saturated ones), so the optimum of a sorted guidance grid lies in a contiguous
run of it. Round 0 scores all ``K`` grid scales on ``first * N`` images each; every round keeps
the contiguous window of ``ceil(keep * m)`` of its ``m`` candidates whose summed score is best (a
window sum is a local average, much less noisy than one point) and grows their image count, and
the last round scores the final candidates on the full ``N`` and picks the best.

Images are reused, not resampled: a cell of ``n`` images is the first ``n`` prompts and seeds of
the sweep, and the row cache (:mod:`ldmscale.rowcache`, ``<store>.rows`` unless the sweep sets
``rows_dir``) keeps every scored image, so growing a candidate from ``n`` to ``n'`` images
samples only ``n' - n``. The last round's cells are the grid's own full-N cells (found in the
store if the grid was run). Image counts between the first and the last round grow
geometrically, capped so that the whole search costs at most ``budget`` of the grid's images:
with K = 8, keep = 1/2 and N = 64 the rounds are 8 x 8, 4 x 22 and 2 x 64 images, 204 new
images (39.8 % of the grid's 512).

Every evaluated cell is written to the results store with its own ``n_images``, so a killed
search resumes from the store like a sweep, and its cells are ordinary rows for the frontier.
"""

from __future__ import annotations

import dataclasses
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
    keep: fraction of candidates kept per round (a contiguous window). first: fraction of the
    sweep's ``n_images`` scored per scale in round 0 (never below ``n_min`` images). budget: the
    most new images the search may spend, as a fraction of the full grid's."""

    metric: str | None = None
    keep: float = 0.5
    first: float = 0.125
    n_min: int = 8
    budget: float = 0.4

    def __post_init__(self) -> None:
        if not 0 < self.keep < 1:
            raise ConfigError(f"AdaptiveConfig.keep must be in (0, 1), got {self.keep}")
        if not 0 < self.first <= 1:
            raise ConfigError(f"AdaptiveConfig.first must be in (0, 1], got {self.first}")
        if self.n_min < 1:
            raise ConfigError(f"AdaptiveConfig.n_min must be >= 1, got {self.n_min}")
        if not 0 < self.budget <= 1:
            raise ConfigError(f"AdaptiveConfig.budget must be in (0, 1], got {self.budget}")


def schedule_cost(rounds: Sequence[tuple[int, int]]) -> int:
    """New images a schedule samples when each round's survivors keep their earlier images."""
    cost, prev = 0, 0
    for m, n in rounds:
        cost += m * (n - prev)
        prev = n
    return cost


def schedule(
    k: int,
    n_images: int,
    keep: float = 0.5,
    n_min: int = 8,
    first: float = 0.125,
    budget: float = 0.4,
) -> list[tuple[int, int]]:
    """``[(candidates, images per candidate), ...]`` for each evaluated round of a grid of ``k``.

    The first round scores ``first * n_images`` images per candidate (at least ``n_min``), the
    last ``n_images``; the rounds between grow geometrically and are trimmed, largest first,
    until the search's new images (:func:`schedule_cost`) fit in ``budget`` of the grid's
    ``k * n_images`` (when the first and last rounds alone exceed it, they are kept anyway).
    """
    sizes = [k]
    while sizes[-1] > 1:
        sizes.append(max(1, math.ceil(sizes[-1] * keep)))
    rounds = sizes[:-1] or [1]
    if len(rounds) == 1:
        return [(rounds[0], n_images)]
    n0 = min(n_images, max(n_min, round(first * n_images)))
    last = len(rounds) - 1
    ns = [int(n0 * (n_images / n0) ** (r / last)) for r in range(last)] + [n_images]
    limit = budget * k * n_images
    while schedule_cost(list(zip(rounds, ns, strict=True))) > limit:
        inner = [r for r in range(1, last) if ns[r] > ns[r - 1]]
        if not inner:
            break
        ns[max(inner, key=lambda r: ns[r])] -= 1
    return list(zip(rounds, ns, strict=True))


def best_window(scores: Sequence[float], width: int) -> int:
    """Start index of the contiguous window of ``width`` with the smallest score sum (first on ties)."""
    sums = [sum(scores[i : i + width]) for i in range(len(scores) - width + 1)]
    return min(range(len(sums)), key=lambda i: sums[i])


@dataclass
class GroupSearch:
    """The search state of one group over a sorted guidance grid (lower score = better).

    Drive it with ``requests()`` -> evaluate each (guidance, n) -> ``tell(scores)``, until
    ``done``; then ``choice`` is the selected guidance and ``images`` the new images spent (a
    candidate grown from ``n`` to ``n'`` images costs ``n' - n``).
    """

    grid: list[float]
    n_images: int
    keep: float = 0.5
    n_min: int = 8
    first: float = 0.125
    budget: float = 0.4
    candidates: list[float] = field(init=False)
    round: int = field(init=False, default=0)
    images: int = field(init=False, default=0)
    trace: list[dict[str, Any]] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.grid = sorted(float(g) for g in self.grid)
        if not self.grid:
            raise SweepError("adaptive search needs at least one guidance scale")
        self.candidates = list(self.grid)
        self._schedule = schedule(
            len(self.grid), self.n_images, self.keep, self.n_min, self.first, self.budget
        )
        self._have = dict.fromkeys(self.grid, 0)

    @property
    def done(self) -> bool:
        return self.round >= len(self._schedule)

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
        for g in self.candidates:
            self.images += max(0, n - self._have[g])
            self._have[g] = max(n, self._have[g])
        self.trace.append(
            {"n": n, "guidance": list(self.candidates), "scores": [float(s) for s in scores]}
        )
        self.round += 1
        if self.done:  # the last round: the best single scale
            best = min(range(len(scores)), key=lambda i: scores[i])
            self.candidates = [self.candidates[best]]
            return
        width = max(1, math.ceil(len(self.candidates) * self.keep))
        start = best_window(list(scores), width)
        self.candidates = self.candidates[start : start + width]


def search_guidance(
    grid: Sequence[float],
    score: Callable[[float, int], float],
    n_images: int,
    adaptive: AdaptiveConfig | None = None,
) -> GroupSearch:
    """Run one group's search with ``score(guidance, n) -> float`` (lower = better) on the
    first ``n`` images."""
    a = adaptive or AdaptiveConfig()
    s = GroupSearch(list(grid), n_images, a.keep, a.n_min, a.first, a.budget)
    while not s.done:
        s.tell([score(g, n) for g, n in s.requests()])
    return s


@dataclass
class AdaptiveResult:
    """choices: one dict per group (model, model_hash, sampler, steps, guidance, value at the
    full ``n_images``, images spent, trace). images: new images the search spent by its schedule
    (a candidate grown from n to n' images counts n' - n; cells found already stored count
    too); grid_images: what the full grid spends; computed: cells computed now."""

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
    executor (serial or Ray) together. Every evaluated cell is written to ``store``. Images are
    reused between rounds through the row cache ``cfg.rows_dir`` (default ``<store>.rows``).
    """
    adaptive = adaptive or AdaptiveConfig()
    metric = adaptive.metric or (cfg.metrics[0] if cfg.metrics else None)
    if metric is None or metric not in cfg.metrics:
        raise SweepError(
            f"adaptive metric {metric!r} is not among the sweep's metrics {list(cfg.metrics)}"
        )
    sign = 1.0 if metric_direction(metric) == "min" else -1.0
    plan = plan_sweep(cfg)
    ctx = dataclasses.replace(plan.context, rows_dir=cfg.rows_dir or f"{cfg.store}.rows")
    groups: dict[tuple, list] = {}
    for cell in plan.cells:  # full-N cells: use them only for the group list and the grid
        groups.setdefault(cell.group, []).append(cell)
    searches = {
        key: (
            cells[0],
            GroupSearch(
                [c.guidance for c in cells],
                cfg.n_images,
                adaptive.keep,
                adaptive.n_min,
                adaptive.first,
                adaptive.budget,
            ),
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
        value = last["scores"][last["guidance"].index(g)] * sign
        images += s.images
        choices.append(
            {
                "model": proto.model.name,
                "model_hash": proto.model.hash,
                "sampler": proto.sampler,
                "steps": proto.steps,
                "guidance": g,
                "metric": metric,
                "value": value,
                "n_images": last["n"],
                "images": s.images,
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
