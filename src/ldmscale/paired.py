"""Paired comparisons of two sweep cells on the same prompts and seeds.

Two cells of one sweep share their images' prompts and seeds: image ``i`` of each is prompt
``i`` with seed ``seed0 + i``. A paired bootstrap resamples the SAME image indices in both
cells, so the noise the two cells share (a hard prompt, a lucky seed) cancels in the
difference; that makes it a stronger test than asking whether two marginal confidence
intervals overlap. It works for any metric whose value is a statistic of per-image rows: a
Frechet distance is a set statistic of the feature rows, alignment a mean of per-image hits.

Conventions:

- ``diff = statistic(rows_a) - statistic(rows_b)`` (in the metric's units).
- ``[lo, hi]``: the percentile interval of the resampled differences at ``level``.
- ``p_better``: the fraction of resamples in which A is better than B (ties count half), for
  the metric's direction (``"min"``: lower is better).
- **Decision**: A beats B when the CI of the difference excludes 0 in A's favour (for a
  lower-is-better metric, ``hi < 0``); B beats A symmetrically; otherwise a tie.
- **Fallback** when per-image rows are missing for either cell: the two stored marginal CIs;
  disjoint intervals decide, overlapping ones are a tie. This is the weaker test (it misses
  differences that pairing detects), and the result says so (``method = "ci_overlap"``).
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

Direction = Literal["min", "max"]
Outcome = Literal["a", "b", "tie"]
Statistic = Callable[[np.ndarray], float]


class PairedError(ValueError):
    """Rows that cannot be paired (different lengths, too few images, bad arguments)."""


@dataclass(frozen=True)
class PairedResult:
    """A paired bootstrap of ``statistic(A) - statistic(B)`` over shared image indices.

    diff: the difference on all ``n`` images; lo/hi: its CI at ``level``; p_better: the share
    of resamples in which A is better (direction ``"min"``: lower is better).
    """

    diff: float
    lo: float
    hi: float
    p_better: float
    n: int = 0
    n_boot: int = 0
    level: float = 0.95
    direction: Direction = "min"

    def outcome(self) -> Outcome:
        """``"a"`` when the CI excludes 0 in A's favour, ``"b"`` in B's, else ``"tie"``."""
        if self.direction == "min":
            return "a" if self.hi < 0 else "b" if self.lo > 0 else "tie"
        return "a" if self.lo > 0 else "b" if self.hi < 0 else "tie"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_difference(
    rows_a: np.ndarray,
    rows_b: np.ndarray,
    statistic: Statistic | tuple[Statistic, Statistic],
    n_boot: int = 200,
    level: float = 0.95,
    seed: int = 0,
    direction: Direction = "min",
) -> PairedResult:
    """Paired bootstrap of ``statistic(rows_a) - statistic(rows_b)``.

    rows_a, rows_b: per-image rows (``[N]`` values or ``[N, D]`` features) of two cells whose
    image ``i`` is the same prompt and seed; the first ``min(len)`` images are used. Each
    resample draws one set of indices and applies it to both. ``statistic`` maps rows to the
    metric value; a pair ``(stat_a, stat_b)`` when the two cells need different ones.
    """
    if not 0 < level < 1:
        raise PairedError(f"level must be in (0, 1), got {level}")
    if n_boot < 2:
        raise PairedError(f"n_boot must be >= 2, got {n_boot}")
    if direction not in ("min", "max"):
        raise PairedError(f"direction must be 'min' or 'max', got {direction!r}")
    a, b = np.asarray(rows_a), np.asarray(rows_b)
    n = min(len(a), len(b))
    if n < 2:
        raise PairedError(f"need at least 2 paired images, got {n}")
    a, b = a[:n], b[:n]
    stat_a, stat_b = statistic if isinstance(statistic, tuple) else (statistic, statistic)
    diff = float(stat_a(a)) - float(stat_b(b))
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_boot)
    for k in range(n_boot):
        idx = rng.integers(0, n, n)
        diffs[k] = float(stat_a(a[idx])) - float(stat_b(b[idx]))
    alpha = 1.0 - level
    lo, hi = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    a_better = diffs < 0 if direction == "min" else diffs > 0
    p_better = float((a_better.sum() + 0.5 * (diffs == 0).sum()) / n_boot)
    return PairedResult(diff, float(lo), float(hi), p_better, n, n_boot, level, direction)


@dataclass(frozen=True)
class Comparison:
    """The outcome of comparing cell A with cell B on one metric.

    outcome: ``"a"``, ``"b"`` or ``"tie"``. method: ``"paired"`` (paired bootstrap on shared
    images), ``"ci_overlap"`` (rows missing: stored marginal CIs, the weaker test), or
    ``"point"`` (no rows and no CIs: by point estimate only). diff/lo/hi: A - B and its paired
    CI (lo/hi None unless paired); p_better: share of resamples with A better (paired only).
    """

    outcome: Outcome
    method: Literal["paired", "ci_overlap", "point"]
    diff: float
    lo: float | None = None
    hi: float | None = None
    p_better: float | None = None
    n: int | None = None
    note: str = ""

    def ci_text(self, digits: int = 3) -> str:
        """``-1.2 [-2.0, -0.4] (paired)`` or ``-1.2 (CI overlap: weaker test)``."""
        d = f"{self.diff:+.{digits}g}"
        if self.method == "paired" and self.lo is not None and self.hi is not None:
            return f"{d} [{self.lo:+.{digits}g}, {self.hi:+.{digits}g}] (paired, n={self.n})"
        if self.method == "ci_overlap":
            return f"{d} (CI overlap, weaker test: no per-image rows)"
        return f"{d} (point estimate only: no rows, no CI)"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ci_overlap_outcome(
    a: tuple[float, float | None, float | None],
    b: tuple[float, float | None, float | None],
    direction: Direction,
) -> Comparison:
    """Compare ``(value, lo, hi)`` triples by their marginal CIs (the fallback test)."""
    (va, la, ha), (vb, lb, hb) = a, b
    diff = va - vb
    if None in (la, ha, lb, hb):
        if va == vb:
            outcome: Outcome = "tie"
        else:
            outcome = "a" if (va < vb) == (direction == "min") else "b"
        return Comparison(outcome, "point", diff, note="no per-image rows and no CI")
    if la <= hb and lb <= ha:
        outcome = "tie"
    else:
        outcome = "a" if (va < vb) == (direction == "min") else "b"
    return Comparison(
        outcome, "ci_overlap", diff, note="no per-image rows: CI overlap, the weaker test"
    )


# ----------------------------------------------------------------------------- row sources


def _protocol_key(protocol: Any) -> str:
    return hashlib.sha256(json.dumps(protocol, sort_keys=True, default=str).encode()).hexdigest()


class RowSource:
    """Where a comparison finds a stored cell's per-image rows and the statistic of a metric.

    rows_fn(row) -> {metric: rows} | None: default ``ldmscale.sweep.cell_rows(row, rows_dir)``
    (the row cache; ``<store>.rows`` by default). statistic_fn(metric, row) -> statistic:
    default ``ldmscale.sweep.metric_statistic`` on the row's protocol (Frechet metrics need
    the protocol's reference; a mean for alignment and CLIP score). Failures of either (no
    cache, no reference) mean "no rows", so the comparison falls back to CI overlap.
    """

    def __init__(
        self,
        rows_dir: str | Path | None = None,
        rows_fn: Callable[[dict], dict[str, np.ndarray] | None] | None = None,
        statistic_fn: Callable[[str, dict], Statistic] | None = None,
    ) -> None:
        self.rows_dir = None if rows_dir is None else Path(rows_dir)
        self._rows_fn = rows_fn
        self._statistic_fn = statistic_fn
        self._rows: dict[str, dict[str, np.ndarray] | None] = {}
        self._stats: dict[tuple[str, str], Statistic | None] = {}
        self.errors: list[str] = []

    def rows(self, row: dict, metric: str) -> np.ndarray | None:
        """The per-image rows of ``metric`` for the stored cell ``row``, or None."""
        key = str(row.get("cell_id") or id(row))
        if key not in self._rows:
            self._rows[key] = self._load(row)
        got = self._rows[key]
        if not got or metric not in got:
            return None
        return np.asarray(got[metric])

    def _load(self, row: dict) -> dict[str, np.ndarray] | None:
        if self._rows_fn is not None:
            return self._rows_fn(row)
        try:
            from ldmscale.sweep import cell_rows
        except ImportError:
            return None
        directory = self.rows_dir if self.rows_dir is not None and self.rows_dir.is_dir() else None
        try:  # without a folder, cell_rows uses the one the row's provenance names
            return cell_rows(row, directory)
        except Exception as e:  # a cache: damage means "no rows", reported as the weaker test
            self.errors.append(f"{row.get('cell_id')}: {e}")
            return None

    def statistic(self, metric: str, row: dict) -> Statistic | None:
        """The function mapping ``metric``'s per-image rows to its value, or None."""
        key = (metric, _protocol_key(row.get("protocol")))
        if key not in self._stats:
            self._stats[key] = self._make_statistic(metric, row)
        return self._stats[key]

    def _make_statistic(self, metric: str, row: dict) -> Statistic | None:
        if self._statistic_fn is not None:
            return self._statistic_fn(metric, row)
        try:
            from ldmscale.sweep import metric_statistic
        except ImportError:
            metric_statistic = None
        protocol = self._located(row.get("protocol") or {})
        if metric_statistic is not None:
            try:
                stat = metric_statistic(metric, protocol)
                if callable(stat):
                    return stat
                params = inspect.signature(metric_statistic).parameters
                if "rows" in params:  # metric_statistic(name, protocol, rows) -> float
                    return lambda r: float(metric_statistic(metric, protocol, r))
            except Exception as e:  # no reference at hand: no paired test, CI overlap instead
                self.errors.append(f"statistic of {metric}: {e}")
        if metric in ("alignment", "clip_score"):
            return lambda r: float(np.mean(r))
        return None

    def _located(self, protocol: dict) -> dict:
        """``protocol`` with a relative reference dataset that is not found from here found
        beside the rows instead: a study stores its dataset relative to the folder it ran from
        (``outputs/study-tiny/data/shapes``), so from any other folder it is looked up under
        each parent of ``rows_dir`` (``<study>/rows``)."""
        ref = protocol.get("reference") or {}
        dataset = ref.get("dataset")
        if not dataset or Path(dataset).is_absolute() or Path(dataset).exists():
            return protocol
        if self.rows_dir is None:
            return protocol
        for parent in self.rows_dir.resolve().parents:
            if (parent / dataset).exists():
                return {**protocol, "reference": {**ref, "dataset": str(parent / dataset)}}
        return protocol


def _seed_prefix_ok(row_a: dict, row_b: dict, n: int) -> bool:
    """Whether the first ``n`` images of both cells share seeds (and seed sets)."""
    if int(row_a.get("seed0") or 0) != int(row_b.get("seed0") or 0):
        return False
    sa = (row_a.get("provenance") or {}).get("seeds")
    sb = (row_b.get("provenance") or {}).get("seeds")
    if sa is not None and sb is not None:
        return list(sa[:n]) == list(sb[:n])
    return True


def compare_rows(
    row_a: dict,
    row_b: dict,
    metric: str,
    direction: Direction,
    source: RowSource | None = None,
    n_boot: int = 200,
    level: float = 0.95,
    seed: int = 0,
) -> Comparison:
    """Compare two stored cells (results-store rows) on ``metric``: a paired bootstrap when both
    cells' per-image rows are available and share their seeds, else their CIs (weaker)."""
    ma = (row_a.get("metrics") or {}).get(metric) or {}
    mb = (row_b.get("metrics") or {}).get(metric) or {}
    if ma.get("value") is None or mb.get("value") is None:
        raise PairedError(f"both cells need a stored {metric!r} value")
    fallback = ci_overlap_outcome(
        (float(ma["value"]), ma.get("lo"), ma.get("hi")),
        (float(mb["value"]), mb.get("lo"), mb.get("hi")),
        direction,
    )
    if source is None:
        return fallback
    ra, rb = source.rows(row_a, metric), source.rows(row_b, metric)
    if ra is None or rb is None:
        return fallback
    n = min(len(ra), len(rb))
    if n < 2 or not _seed_prefix_ok(row_a, row_b, n):
        return Comparison(
            fallback.outcome,
            fallback.method,
            fallback.diff,
            note="cells do not share seeds: CI overlap, the weaker test",
        )
    sa, sb = source.statistic(metric, row_a), source.statistic(metric, row_b)
    if sa is None or sb is None:
        return fallback
    res = paired_difference(ra, rb, (sa, sb), n_boot, level, seed, direction)
    return Comparison(
        res.outcome(), "paired", res.diff, res.lo, res.hi, res.p_better, res.n, "paired bootstrap"
    )


def describe_methods(comparisons: Sequence[Comparison]) -> str:
    """One sentence on how a set of comparisons was decided (paired vs the weaker fallback)."""
    n_pair = sum(c.method == "paired" for c in comparisons)
    n_ov = sum(c.method == "ci_overlap" for c in comparisons)
    n_pt = sum(c.method == "point" for c in comparisons)
    parts = [f"{n_pair} by paired bootstrap over shared prompts and seeds"]
    if n_ov:
        parts.append(
            f"{n_ov} by CI overlap because per-image rows were missing (a weaker test: it "
            f"can call a tie where pairing would find a difference)"
        )
    if n_pt:
        parts.append(f"{n_pt} by point estimate only (no rows, no CI)")
    return "Comparisons: " + "; ".join(parts) + "."
