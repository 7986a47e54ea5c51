"""The results store's rows: their fields, which rows count, which metric, seed set and
spacing to read, and reading them from a file.

A row is a plain dict as ``ResultsStore.rows()`` returns it (see :mod:`ldmscale.frontier`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

#: Preference order when no metric is named and several are stored equally often.
METRIC_PREFERENCE = ("fid", "fd_probe", "fd_effnet", "kid", "alignment", "clip_score")

#: The spacing of rows stored before ``timestep_spacing`` was a sweep field.
OLD_SPACING = "leading"


class FrontierError(ValueError):
    """Rows that cannot answer the question asked (no such metric, nothing under budget, ...)."""


# ----------------------------------------------------------------------------- row fields


def model_key(row: dict) -> str:
    """A row's model identity: its weight hash ``model_hash``, else its model name."""
    return str(row.get("model_hash") or row["model"])


def spacing_of(row: dict) -> str:
    """The row's timestep spacing (``timestep_spacing``, or its provenance's sampler config);
    ``leading`` for rows from before spacing was stored."""
    s = row.get("timestep_spacing")
    if s is None:
        s = ((row.get("provenance") or {}).get("sampler_config") or {}).get("timestep_spacing")
    return str(s) if s else OLD_SPACING


def seed0_of(row: dict) -> int:
    """The first seed of the row's seed set (``seed0``; 0 for old rows)."""
    s = row.get("seed0")
    return int(s) if s is not None else 0


def train_step_of(row: dict) -> int | None:
    """The training step of a checkpoint evaluation (``train_step`` on the row or in its
    provenance); None for an evaluation of a model without one."""
    step = row.get("train_step")
    if step is None:
        step = (row.get("provenance") or {}).get("train_step")
    return int(step) if step is not None else None


def train_seed_of(row: dict) -> int | None:
    """The training seed of the row's model (``train_seed``, or in provenance); None if unknown."""
    s = row.get("train_seed")
    if s is None:
        s = (row.get("provenance") or {}).get("train_seed")
    return int(s) if s is not None else None


def _run_dir(model_path: Any) -> str | None:
    """The training run folder of a model path: ``<run>/model``, ``<run>/checkpoints/<x>`` and
    ``<run>/evals/step-N`` (the layout ``ldmscale train`` writes) all give ``<run>``."""
    if not model_path:
        return None
    p = Path(str(model_path))
    parts = p.parts
    for sub in ("checkpoints", "evals"):
        if sub in parts[:-1]:
            return str(Path(*parts[: parts.index(sub)]))
    return str(p.parent) if p.name == "model" else str(p)


def run_key(row: dict) -> tuple:
    """The training run a row's model comes from: ``(run, c, train_seed)`` where ``run`` is the
    row's ``train_run`` (or the ``run`` its model config records), else the run folder of
    ``model_path``, else the model name. The model name alone is not enough: two seeds of one
    width may share it."""
    cfg = (row.get("provenance") or {}).get("model_config") or {}
    run = (
        row.get("train_run")
        or (cfg.get("run") if isinstance(cfg, dict) else None)
        or _run_dir(row.get("model_path"))
        or str(row["model"])
    )
    return (str(run), row.get("c"), train_seed_of(row))


def final_rows(rows: Iterable[dict]) -> list[dict]:
    """Rows that evaluate each run's final weights: drops checkpoint rows, i.e. rows whose
    ``train_step`` is below the largest one stored for the same run (:func:`run_key`)."""
    rows = list(rows)
    last: dict[tuple, int] = {}
    for r in rows:
        step = train_step_of(r)
        if step is not None:
            k = run_key(r)
            last[k] = max(step, last.get(k, step))
    return [r for r in rows if train_step_of(r) in (None, last.get(run_key(r)))]


def checkpoint_rows(rows: Iterable[dict]) -> list[dict]:
    """Rows of scored checkpoints: every row with a ``train_step`` (the final step included)."""
    return [r for r in rows if train_step_of(r) is not None]


def primary_spacing(rows: Sequence[dict]) -> str:
    """The most stored timestep spacing (ties: ``trailing``, then alphabetical)."""
    counts = Counter(spacing_of(r) for r in rows)
    if not counts:
        raise FrontierError("no rows")
    return min(counts, key=lambda s: (-counts[s], s != "trailing", s))


def seed_sets(rows: Iterable[dict]) -> Counter:
    """How many rows each seed set (``seed0``) has."""
    return Counter(seed0_of(r) for r in rows)


def default_report_seed0(rows: Sequence[dict], select_seed0: int = 0) -> int | None:
    """The fresh seed set to report optima on: the most stored ``seed0`` other than
    ``select_seed0`` among final rows (ties: the smallest), or None when there is none."""
    counts = seed_sets(final_rows(rows))
    counts.pop(select_seed0, None)
    if not counts:
        return None
    return min(counts, key=lambda s: (-counts[s], s))


# ----------------------------------------------------------------------------- metrics


def available_metrics(rows: Iterable[dict]) -> Counter:
    """How many rows carry each metric."""
    counts: Counter = Counter()
    for r in rows:
        counts.update((r.get("metrics") or {}).keys())
    return counts


def default_metric(rows: Sequence[dict]) -> str:
    """The metric stored on the most rows (ties: :data:`METRIC_PREFERENCE` order, then name)."""
    counts = available_metrics(rows)
    if not counts:
        raise FrontierError("no row carries any metric: run the sweep (ldmscale sweep) first")
    pref = {m: i for i, m in enumerate(METRIC_PREFERENCE)}
    return min(counts, key=lambda m: (-counts[m], pref.get(m, len(pref)), m))


def _check_metric(rows: Sequence[dict], metric: str) -> None:
    counts = available_metrics(rows)
    if metric not in counts:
        have = ", ".join(sorted(counts)) or "none"
        raise FrontierError(f"metric {metric!r} is not in the results; stored metrics: {have}")


# ----------------------------------------------------------------------------- filters


def _setting_key(row: dict) -> tuple:
    return (model_key(row), str(row["sampler"]), spacing_of(row), int(row["steps"]))


def _filter(
    rows: Iterable[dict], samplers: Sequence[str] | None, spacing: str | None = None
) -> list[dict]:
    rows = final_rows(rows)
    if samplers:
        rows = [r for r in rows if r["sampler"] in set(samplers)]
    if spacing is not None:
        rows = [r for r in rows if spacing_of(r) == spacing]
    return rows


# ----------------------------------------------------------------------------- files


def load_rows(path: str | Path) -> list[dict]:
    """Rows from a results store (SQLite, via ``ldmscale.store.ResultsStore``; without its
    super-resolution cells) or from a JSON list / JSON-lines file of row dicts (the same format
    ``store.rows()`` returns)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"results store not found: {path} (run `ldmscale sweep` first)")
    if path.suffix in (".json", ".jsonl"):
        text = path.read_text()
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        data = json.loads(text)
        if not isinstance(data, list):
            raise FrontierError(f"{path}: expected a JSON list of result rows")
        return data
    try:
        from ldmscale.store import ResultsStore
    except ImportError as e:
        raise FrontierError(
            f"cannot read {path}: ldmscale.store is not available; pass a .json/.jsonl rows file"
        ) from e
    store = ResultsStore(path)
    try:
        # Super-resolution cells (protocol "sr", ldmscale.sr_eval) share a study's store but are
        # not text-to-image cells: the frontier and the report leave them out.
        return [r for r in store.rows() if not (r.get("protocol") or {}).get("sr")]
    finally:
        close = getattr(store, "close", None)
        if close:
            close()
