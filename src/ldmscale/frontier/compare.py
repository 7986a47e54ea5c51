"""How two points are compared: a paired bootstrap over the images their cells share, else
the overlap of their CIs (the weaker test)."""

from __future__ import annotations

from collections.abc import Sequence

from ldmscale.frontier.points import Point
from ldmscale.metrics.registry import metric_direction
from ldmscale.paired import Comparison, RowSource, ci_overlap_outcome, compare_rows


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
