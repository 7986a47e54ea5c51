"""Reading the floors (``floors.json``): the best value a model could reach on each metric,
from real images of the cells' prompts and from autoencoder reconstructions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ldmscale.frontier.points import _fmt, _num
from ldmscale.frontier.rows import FrontierError

FLOOR_KINDS = ("real", "reconstruction")


def load_floors(path: str | Path) -> dict[str, dict[str, dict[str, float]]]:
    """Read ``floors.json``: ``{metric: {"real": {"value", "lo", "hi", "n"},
    "reconstruction": {...}}}`` (the best value a model could reach: real images of the cells' prompts,
    and on autoencoder reconstructions, scored like the cells). Raises on a malformed file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"floors file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise FrontierError(f"{path}: not JSON ({e})") from e
    return check_floors(data, str(path))


def check_floors(data: Any, where: str = "floors") -> dict[str, dict[str, dict[str, float]]]:
    """Validate a floors mapping (see :func:`load_floors`); returns it with float values."""
    if not isinstance(data, dict):
        raise FrontierError(f"{where}: expected {{metric: {{kind: {{value, lo, hi, n}}}}}}")
    out: dict[str, dict[str, dict[str, float]]] = {}
    for metric, kinds in data.items():
        if metric == "meta":  # what produced the floors (ldmscale.floors), not a metric
            continue
        if not isinstance(kinds, dict):
            raise FrontierError(f"{where}: {metric!r} must map floor kinds to values")
        out[metric] = {}
        for kind, v in kinds.items():
            if not isinstance(v, dict) or _num(v.get("value")) is None:
                raise FrontierError(f"{where}: {metric}.{kind} needs a numeric 'value'")
            out[metric][kind] = {
                k: (float(v[k]) if k != "n" else int(v[k]))
                for k in ("value", "lo", "hi", "n")
                if v.get(k) is not None
            }
    return out


def floor_items(floors: dict | None, metric: str) -> list[tuple[str, dict[str, float]]]:
    """The floors of ``metric`` as ``[(kind, {"value", "lo", "hi", "n"})]`` (real first)."""
    kinds = (floors or {}).get(metric) or {}
    order = {k: i for i, k in enumerate(FLOOR_KINDS)}
    return sorted(kinds.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))


def floor_text(kind: str, f: dict[str, float]) -> str:
    """``real images: 1.23 [1.1, 1.4] (n=256)``."""
    name = {"real": "real images", "reconstruction": "autoencoder reconstructions"}.get(kind, kind)
    s = f"{name}: {_fmt(f['value'])}"
    if f.get("lo") is not None and f.get("hi") is not None:
        s += f" [{_fmt(f['lo'])}, {_fmt(f['hi'])}]"
    if f.get("n") is not None:
        s += f" (n={int(f['n'])})"
    return s
