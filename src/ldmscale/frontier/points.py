"""A scored configuration (:class:`Point`), read from a row, labelled and ordered.

``sampling_cost`` = normalized cost x sampling steps (the paper's x-axis, Fig. 9-11).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from ldmscale import cost
from ldmscale.frontier.rows import OLD_SPACING, seed0_of, spacing_of, train_seed_of
from ldmscale.metrics.registry import Direction

#: Tolerance for "cost <= budget" comparisons (relative).
_EPS = 1e-9


def better(a: float, b: float, direction: Direction) -> bool:
    """True if value ``a`` is strictly better than ``b``."""
    return a < b if direction == "min" else a > b


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


def _model_order(p: Point) -> tuple:
    return (
        p.c if p.c is not None else math.inf,
        p.train_seed if p.train_seed is not None else -1,
        p.model_id,
    )
