"""Matplotlib pieces the figures share: colours, CI error bars, floor lines, edge marks, the
legend, saving."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from ldmscale.frontier import Point, assign_labels, floor_items, floor_text
from ldmscale.report.analysis import Analysis

FLOOR_STYLE = {"real": ("tab:red", ":"), "reconstruction": ("tab:orange", "-.")}

DPI = 110


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(0.05 + 0.85 * i / max(n - 1, 1)) for i in range(n)]


def _order(p: Point) -> tuple:
    return (p.c if p.c is not None else math.inf, p.train_seed or -1, p.model_id)


def _model_keys(points: Sequence[Point]) -> list[str]:
    """Model identities (weight hash, else name) in width order (smallest first)."""
    first: dict[str, Point] = {}
    for p in points:
        first.setdefault(p.model_id, p)
    return sorted(first, key=lambda m: _order(first[m]))


def _labels(points: Sequence[Point]) -> dict[str, str]:
    """Model identity -> legend label (``c=64``; ``c=64 seed 1`` when two models share a width)."""
    return {p.model_id: p.label() for p in assign_labels(list(points))}


def _err(ps: Sequence[Point]) -> Any:
    """Asymmetric error bars from the CIs (zero where a point has no CI). A CI that does not
    contain its point (rows from another tool's plain percentile bootstrap) is drawn from the
    point to the far end, never as a negative bar."""
    lower = [max(p.value - p.lo, 0.0) if p.has_ci else 0.0 for p in ps]
    upper = [max(p.hi - p.value, 0.0) if p.has_ci else 0.0 for p in ps]
    return [lower, upper]


def _errorbar(ax: Any, x: Sequence[float], ps: Sequence[Point], ms: float, **style: Any) -> None:
    """One series of points at ``x``, markers of size ``ms``, with their CIs as error bars."""
    style.setdefault("marker", "o")
    ax.errorbar(x, [p.value for p in ps], yerr=_err(ps), ms=ms, capsize=2, **style)


def _floor_lines(ax: Any, a: Analysis) -> bool:
    """Draw the primary metric's floors as horizontal lines (with their CI as a band)."""
    items = floor_items(a.floors, a.metric)
    for kind, f in items:
        color, ls = FLOOR_STYLE.get(kind, ("gray", "--"))
        name = {"real": "floor: real images", "reconstruction": "floor: AE reconstructions"}
        ax.axhline(f["value"], color=color, ls=ls, lw=1.3, label=name.get(kind, f"floor: {kind}"))
        if f.get("lo") is not None and f.get("hi") is not None:
            ax.axhspan(f["lo"], f["hi"], color=color, alpha=0.08, lw=0)
    return bool(items)


def _floor_caption(a: Analysis) -> str:
    items = floor_items(a.floors, a.metric)
    if not items:
        return " No floors were given (floors.json), so the best possible value is not shown."
    return " Horizontal lines: floors, " + "; ".join(floor_text(k, f) for k, f in items) + "."


def _mark_edges(ax: Any, x: Sequence[float], ps: Sequence[Point]) -> int:
    """Red triangles on optima at the edge of their guidance grid; returns how many."""
    xs = [xi for xi, p in zip(x, ps) if p.at_edge]
    ys = [p.value for p in ps if p.at_edge]
    if xs:
        ax.plot(xs, ys, "^", ms=9, mfc="none", mec="red", mew=1.4, zorder=5)
    return len(xs)


def _outside_legend(fig: Figure, ax: Any) -> None:
    """One legend for the figure, to the right of the axes (never over the data)."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, title="width", fontsize=7, loc="outside right upper")


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    return path


def _smooth(y: Sequence[float], frac: float = 0.1) -> list[float]:
    k = max(1, int(len(y) * frac))
    out, acc = [], 0.0
    for i, v in enumerate(y):
        acc += v
        if i >= k:
            acc -= y[i - k]
        out.append(acc / min(i + 1, k))
    return out
