"""Adaptive guidance search: each (model, sampler, steps) group's best CFG scale with far fewer
images than the full grid.

Algorithm (a race with paired bootstrap elimination and image reuse): round 0 scores every
scale of the grid on the first ``first * N`` images. After each round the scale with the best
score is the leader, and a scale is dropped once a paired bootstrap over the images says it is
better than the leader in fewer than ``alpha`` of the resamples (the scales share prompts and
seeds, so their errors are correlated and the paired difference is far less noisy than either
score). The survivors then grow their image count (doubling, capped by what is left of the
budget), until they reach the full ``N``, or the budget of ``budget * K * N`` new images cannot
grow them any further; the leader of the last round is the choice. On a flat, noisy curve
nothing is dropped and the race ends as a smaller grid (every scale on about ``budget * N``
images); on a curved one the losing scales go early and the budget buys the close contenders
the full ``N``, where their scores are the grid's own.

Images are reused, not resampled: a cell of ``n`` images is the first ``n`` prompts and seeds of
the sweep, and the row cache (:mod:`ldmscale.rowcache`, ``<store>.rows`` unless the sweep sets
``rows_dir``) keeps every scored image, so growing a scale from ``n`` to ``n'`` images samples
only ``n' - n``, and the bootstrap reads the per-image rows from it (a stored cell whose rows
are not cached, from a run before the cache, is sampled again for them). Without rows (a
custom evaluator), a scale is dropped only when its stored CI and the leader's do not overlap.

Every evaluated cell is written to the results store with its own ``n_images``, so a killed
search resumes from the store like a sweep, and its cells are ordinary rows for the frontier.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ldmscale.config import Config, ConfigError
from ldmscale.metrics.protocol import metric_statistic
from ldmscale.metrics.registry import metric_direction
from ldmscale.store import ResultsStore
from ldmscale.sweep.config import SweepConfig, SweepError
from ldmscale.sweep.evaluate import evaluate_cell
from ldmscale.sweep.plan import Evaluator, plan_sweep
from ldmscale.sweep.run import run_cells

Statistic = Callable[[np.ndarray], float]


@dataclass
class AdaptiveConfig(Config):
    """metric: the metric optimized (default: the sweep's first metric; direction from its name).
    first: fraction of the sweep's ``n_images`` every scale gets in round 0 (at least ``n_min``).
    budget: the most new images the search may spend, as a fraction of the full grid's.
    alpha: a scale is dropped when it beats the leader in fewer than this fraction of the
    paired bootstrap resamples (``n_boot`` of them, seeded by ``seed``). grow: image-count
    factor per round."""

    metric: str | None = None
    first: float = 0.125
    n_min: int = 8
    budget: float = 0.4
    alpha: float = 0.2
    n_boot: int = 40
    grow: float = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.first <= 1:
            raise ConfigError(f"AdaptiveConfig.first must be in (0, 1], got {self.first}")
        if self.n_min < 2:
            raise ConfigError(f"AdaptiveConfig.n_min must be >= 2, got {self.n_min}")
        if not 0 < self.budget <= 1:
            raise ConfigError(f"AdaptiveConfig.budget must be in (0, 1], got {self.budget}")
        if not 0 <= self.alpha < 0.5:
            raise ConfigError(f"AdaptiveConfig.alpha must be in [0, 0.5), got {self.alpha}")
        if self.n_boot < 2 or self.grow <= 1:
            raise ConfigError("AdaptiveConfig.n_boot must be >= 2 and grow > 1")


def paired_worse(
    rows: Sequence[np.ndarray],
    statistic: Statistic,
    leader: int,
    alpha: float,
    n_boot: int = 40,
    seed: int = 0,
) -> list[bool]:
    """Which candidates are confidently worse than ``leader`` (lower statistic = better).

    ``rows[i]`` are candidate ``i``'s per-image rows, image ``j`` the same prompt and seed for
    every candidate. Each bootstrap resample draws one set of image indices and applies it to
    every candidate (paired); candidate ``i`` is worse when its statistic is at most the
    leader's in fewer than ``alpha`` of the ``n_boot`` resamples.
    """
    n = min(len(r) for r in rows)
    rng = np.random.default_rng(seed)
    wins = np.zeros(len(rows))
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        vals = [statistic(np.asarray(r)[:n][idx]) for r in rows]
        wins += np.array(vals) <= vals[leader]
    return [i != leader and wins[i] / n_boot < alpha for i in range(len(rows))]


@dataclass
class GroupSearch:
    """The race of one group over a sorted guidance grid (lower score = better).

    Drive it with ``requests()`` -> evaluate each (guidance, n) -> ``tell(scores, worse)``,
    until ``done``; then ``choice`` is the selected guidance and ``images`` the new images
    spent (a scale grown from ``n`` to ``n'`` images costs ``n' - n``).
    """

    grid: list[float]
    n_images: int
    first: float = 0.125
    n_min: int = 8
    budget: float = 0.4
    grow: float = 2.0
    active: list[float] = field(init=False)
    n: int = field(init=False)
    images: int = field(init=False, default=0)
    choice_: float | None = field(init=False, default=None)
    trace: list[dict[str, Any]] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.grid = sorted(float(g) for g in self.grid)
        if not self.grid:
            raise SweepError("adaptive search needs at least one guidance scale")
        self.active = list(self.grid)
        self.n = min(self.n_images, max(self.n_min, round(self.first * self.n_images)))
        self._have = dict.fromkeys(self.grid, 0)
        self._limit = self.budget * len(self.grid) * self.n_images

    @property
    def done(self) -> bool:
        return self.choice_ is not None

    @property
    def choice(self) -> float:
        if self.choice_ is None:
            raise SweepError("the search has not finished")
        return self.choice_

    def requests(self) -> list[tuple[float, int]]:
        """The (guidance, n_images) evaluations this round needs (empty once done)."""
        return [] if self.done else [(g, self.n) for g in self.active]

    def tell(self, scores: Sequence[float], worse: Sequence[bool] | None = None) -> None:
        """This round's scores (in request order, lower = better) and which scales are
        confidently worse than the leader (see :func:`paired_worse`; None: none)."""
        if len(scores) != len(self.active):
            raise SweepError(f"expected {len(self.active)} scores, got {len(scores)}")
        worse = list(worse) if worse is not None else [False] * len(scores)
        for g in self.active:
            self.images += max(0, self.n - self._have[g])
            self._have[g] = max(self.n, self._have[g])
        leader = min(range(len(scores)), key=lambda i: scores[i])
        self.trace.append(
            {
                "n": self.n,
                "guidance": list(self.active),
                "scores": [float(s) for s in scores],
                "dropped": [g for g, w in zip(self.active, worse, strict=True) if w],
            }
        )
        best = self.active[leader]
        if self.n >= self.n_images:
            self.choice_ = best
            return
        self.active = [g for g, w in zip(self.active, worse, strict=True) if not w or g == best]
        left = self._limit - self.images
        step = int(left // len(self.active))
        n_next = min(self.n_images, int(self.n * self.grow), self.n + max(0, step))
        if n_next <= self.n:  # the budget cannot grow the survivors: the leader wins
            self.choice_ = best
            return
        self.n = n_next


def search_guidance(
    grid: Sequence[float],
    rows: Callable[[float, int], np.ndarray],
    statistic: Statistic,
    n_images: int,
    adaptive: AdaptiveConfig | None = None,
) -> GroupSearch:
    """Race one group: ``rows(guidance, n)`` gives the per-image rows of the first ``n`` images
    and ``statistic(rows)`` the score (lower = better)."""
    a = adaptive or AdaptiveConfig()
    s = GroupSearch(list(grid), n_images, a.first, a.n_min, a.budget, a.grow)
    rnd = 0
    while not s.done:
        r = [rows(g, n) for g, n in s.requests()]
        scores = [statistic(x) for x in r]
        leader = min(range(len(scores)), key=lambda i: scores[i])
        s.tell(scores, paired_worse(r, statistic, leader, a.alpha, a.n_boot, a.seed + rnd))
        rnd += 1
    return s


def synthetic_rows(
    grid: Sequence[float],
    n_images: int,
    noise: float,
    curvature: float = 8.0,
    rng: np.random.Generator | None = None,
) -> tuple[dict[float, np.ndarray], float]:
    """Per-image rows of a seeded unimodal quality-vs-guidance curve, for benchmarks and tests.

    Image ``i`` at scale ``w`` scores ``20 + curvature (ln w - ln w*)^2 + u_i + e_iw`` with an
    image effect ``u_i`` shared by all scales (as a shared prompt and seed is) and
    ``e_iw ~ N(0, noise^2 n_images)``, so a scale's mean over the ``n_images`` images has noise
    std ``noise``; ``w*`` is log-uniform over the grid's range. The score is the mean (lower =
    better). Returns ``({w: rows [n_images]}, w*)``.
    """
    rng = rng or np.random.default_rng(0)
    lo, hi = np.log(min(grid)), np.log(max(grid))
    log_opt = rng.uniform(lo, hi)
    shared = rng.normal(0.0, 2 * noise * np.sqrt(n_images), n_images)
    rows = {
        float(w): 20
        + curvature * (np.log(w) - log_opt) ** 2
        + shared
        + rng.normal(0.0, noise * np.sqrt(n_images), n_images)
        for w in grid
    }
    return rows, float(np.exp(log_opt))


@dataclass
class AdaptiveResult:
    """choices: one dict per group (model, model_hash, sampler, steps, guidance, value and
    n_images of its last round, images spent, trace). images: new images the search spent (a
    scale grown from n to n' images counts n' - n; cells found already stored count too);
    grid_images: what the full grid spends; computed: cells computed now."""

    choices: list[dict[str, Any]]
    images: int
    grid_images: int
    computed: int

    @property
    def fraction(self) -> float:
        return self.images / self.grid_images if self.grid_images else 0.0


def _group_searches(
    groups: dict[tuple, list], n_images: int, adaptive: AdaptiveConfig
) -> dict[tuple, tuple[Any, GroupSearch]]:
    """``{group: (its first full-N cell, its GroupSearch over the group's guidance grid)}``."""
    return {
        key: (
            cells[0],
            GroupSearch(
                [c.guidance for c in cells],
                n_images,
                adaptive.first,
                adaptive.n_min,
                adaptive.budget,
                adaptive.grow,
            ),
        )
        for key, cells in groups.items()
    }


def _cached_rows(cells: list, rows_dir: str, evaluate: Evaluator | None) -> dict[str, Any]:
    """``{cell_id: its cached per-image rows}``; a cell stored before the row cache existed is
    re-scored by the built-in evaluator to fill it (its stored row is kept)."""
    from ldmscale.rowcache import load_rows, reusable

    cached_rows = {}
    for cell in cells:
        cached = load_rows(rows_dir, cell.family)
        missing = cached is None or reusable(cached, cell.prompts, cell.seeds) < cell.n_images
        if missing and evaluate in (None, evaluate_cell):  # stored before the row cache
            evaluate_cell(cell)  # fills the row cache; the stored row is kept
            cached = load_rows(rows_dir, cell.family)
        cached_rows[cell.cell_id] = cached
    return cached_rows


def _choices(
    searches: dict[tuple, tuple[Any, GroupSearch]], metric: str, sign: float
) -> tuple[list[dict[str, Any]], int]:
    """Each group's chosen guidance with its last score and trace; and the images used."""
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
    return choices, images


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
    from ldmscale.rowcache import reusable

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
    searches = _group_searches(groups, cfg.n_images, adaptive)
    statistic: Statistic | None = None
    computed = 0
    rnd = 0
    while True:
        requests = {
            key: [
                ctx.cell(proto.model, proto.sampler, proto.steps, g, n, proto.timestep_spacing)
                for g, n in s.requests()
            ]
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
        cached_rows = _cached_rows(all_cells, ctx.rows_dir, evaluate)
        for key, cells in requests.items():
            stored = [_metric(store, c.cell_id, metric) for c in cells]
            scores = [sign * m["value"] for m in stored]
            leader = min(range(len(scores)), key=lambda i: scores[i])
            cached = [cached_rows[c.cell_id] for c in cells]
            if all(reusable(r, c.prompts, c.seeds) >= c.n_images for r, c in zip(cached, cells)):
                if statistic is None:
                    base = metric_statistic(metric, ctx.protocol)
                    statistic = (lambda x, base=base: sign * base(x)) if sign < 0 else base
                rows = [r.rows[metric][: c.n_images] for r, c in zip(cached, cells, strict=True)]
                seed = adaptive.seed + rnd
                worse = paired_worse(rows, statistic, leader, adaptive.alpha, adaptive.n_boot, seed)
            else:  # no per-image rows (a custom evaluator): drop only on disjoint stored CIs
                lo = [min(sign * m["lo"], sign * m["hi"]) for m in stored]
                hi = [max(sign * m["lo"], sign * m["hi"]) for m in stored]
                worse = [i != leader and lo[i] > hi[leader] > lo[leader] for i in range(len(cells))]
            searches[key][1].tell(scores, worse)
        rnd += 1
    choices, images = _choices(searches, metric, sign)
    grid_images = sum(len(cells) * cfg.n_images for cells in groups.values())
    return AdaptiveResult(choices, images, grid_images, computed)


def _metric(store: ResultsStore, cell_id: str, metric: str) -> dict[str, float]:
    row = store.get(cell_id)
    if row is None or metric not in row["metrics"]:
        raise SweepError(f"cell {cell_id} has no stored value for metric {metric!r}")
    return row["metrics"][metric]
