"""The built-in evaluator: sample a cell with per-image seeds, score it, attach bootstrap CIs.

:func:`evaluate_cell` samples with ``ldmscale.sampling.generate``, scores the images with the
protocol's metrics (:mod:`ldmscale.metrics.protocol`) and keeps each image's metric rows in the
row cache (:mod:`ldmscale.rowcache`) when the cell names one. :func:`cell_rows` reads a stored
cell's rows back (for paired comparisons and the adaptive search).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ldmscale.io import hash_json
from ldmscale.metrics.protocol import metric_rows, score_rows
from ldmscale.sweep.config import DEFAULT_SPACING
from ldmscale.sweep.models import ModelInfo
from ldmscale.sweep.plan import Cell, CellResult, sampler_identity

#: One loaded model per process: cells are grouped by model.
_MODELS: dict[str, Any] = {}


def _load_model_cached(model: ModelInfo) -> Any:
    if model.hash not in _MODELS:
        from ldmscale.model import load_model

        _MODELS.clear()  # one model resident per process: cells are grouped by model
        _MODELS[model.hash] = load_model(model.path)
    return _MODELS[model.hash]


#: ``sample(model, m)`` of :func:`evaluate_with_row_cache`: sample and score the cell's images
#: ``m`` to ``n_images``, returning their metric rows, the feature networks' fingerprints and the
#: sampling result (anything with ``nfe``, ``flops`` and ``sampling_cost``, e.g. a
#: :class:`~ldmscale.sampling.SampleResult`).
SampleAndScore = Callable[[Any, int], tuple[dict[str, np.ndarray], dict[str, Any], Any]]


def evaluate_with_row_cache(
    cell: Cell, sample: SampleAndScore, extra: dict[str, Any] | None = None
) -> CellResult:
    """The row-cache tail shared by every evaluator: reuse the leading images of the cell's
    family already in ``cell.rows_dir``, call ``sample(model, m)`` for the rest only (the model
    loaded once per process), store the extended rows, and score the first ``n_images`` rows
    with the protocol's bootstrap CIs. ``extra`` goes into the result's ``extra`` first."""
    from ldmscale import rowcache

    t0 = time.perf_counter()
    n = cell.n_images
    cached = rowcache.load_rows(cell.rows_dir, cell.family) if cell.rows_dir else None
    m = rowcache.reusable(cached, cell.prompts, cell.seeds)
    rows = cached
    if m < n:
        model = _load_model_cached(cell.model)
        new_rows, fingerprints, result = sample(model, m)
        seeds = list(cell.seeds[m:])
        meta = {
            "nfe": float(result.nfe),
            "flops_per_image": float(result.flops) / len(seeds),
            "norm_cost": float(model.norm_cost),
            "sampling_cost": float(result.sampling_cost),
            "feature_networks": fingerprints,
        }
        new = rowcache.CachedRows(
            np.asarray(seeds, np.int64),
            rowcache.prompt_keys(list(cell.prompts[m:])),
            new_rows,
            meta,
        )
        rows = rowcache.extend(cached, m, new)
        if cell.rows_dir:
            rowcache.save_rows(cell.rows_dir, cell.family, rows)
    assert rows is not None
    metrics = score_rows({k: v[:n] for k, v in rows.rows.items()}, cell.protocol, seed=cell.seed0)
    meta = rows.meta
    return CellResult(
        metrics=metrics,
        nfe=meta["nfe"],
        flops=meta["flops_per_image"],
        norm_cost=meta["norm_cost"],
        wall_s=time.perf_counter() - t0,
        extra={
            **(extra or {}),
            "sampling_cost": meta["sampling_cost"],
            "feature_networks": meta["feature_networks"],
            **({"reused_images": m} if cell.rows_dir else {}),
        },
    )


def evaluate_cell(cell: Cell) -> CellResult:
    """The built-in evaluator: sample the cell with per-image seeds
    (``ldmscale.sampling.generate``), score the images with the protocol's metrics, and attach
    percentile bootstrap CIs over the generated images.

    The scheduler runs with ``cell.timestep_spacing`` (set explicitly, also for ``leading``).
    With ``cell.rows_dir`` set, the leading images already scored for the cell's family (same
    model, sampler config, protocol and seed set, any image count) are reused from the row cache
    and only the rest are sampled; ``extra["reused_images"]`` says how many.
    """
    from ldmscale.sampling import SamplerConfig, generate

    cfg = SamplerConfig(cell.sampler, cell.steps, cell.guidance, cell.timestep_spacing)

    def sample(model: Any, m: int) -> tuple[dict[str, np.ndarray], dict[str, Any], Any]:
        prompts, seeds = list(cell.prompts[m:]), list(cell.seeds[m:])
        result = generate(model, prompts, seeds, cfg, batch_size=cell.batch_size, progress=False)
        return (*metric_rows(result.images, prompts, cell.protocol), result)

    return evaluate_with_row_cache(cell, sample)


def cell_rows(
    row: dict[str, Any], rows_dir: str | Path | None = None
) -> dict[str, np.ndarray] | None:
    """A stored cell's per-image metric rows from the row cache, or None if they are not there.

    ``row`` is a results-store row (:meth:`ldmscale.store.ResultsStore.rows`); ``rows_dir`` the
    row-cache folder, by default the one its provenance names (``provenance["rows_dir"]``,
    written by :func:`~ldmscale.sweep.run.cell_row` when the sweep had one; the adaptive search's default is
    ``<store>.rows``). Returns ``{metric: array}`` holding the cell's first ``n_images`` images
    in seed order (image ``i`` = prompt ``i`` with seed ``seed0 + i``: row ``i`` of two cells
    of one sweep is the same prompt and seed, so they pair). None when the folder or family
    file is missing, holds fewer images, or its seeds or prompts differ from the row's.
    Values: feed them to :func:`~ldmscale.metrics.protocol.metric_statistic` with
    ``row["protocol"]``.
    """
    from ldmscale.rowcache import family_key, load_rows

    prov = row.get("provenance") or {}
    directory = rows_dir if rows_dir is not None else prov.get("rows_dir")
    if not directory or not Path(directory).is_dir():
        return None
    n = int(row["n_images"])
    seeds = prov.get("seeds")
    seed0 = row.get("seed0")
    if seed0 is None:
        seed0 = int(seeds[0]) if seeds else 0
    spacing = row.get("timestep_spacing") or DEFAULT_SPACING
    sampler = sampler_identity(row["sampler"], row["steps"], row["guidance"], spacing)
    family = family_key(row["model_hash"], sampler, row.get("protocol") or {}, int(seed0))
    cached = load_rows(directory, family)
    if cached is None or len(cached) < n:
        return None
    expected = np.asarray(seeds[:n] if seeds else range(seed0, seed0 + n), np.int64)
    if len(expected) != n or not np.array_equal(cached.seeds[:n], expected):
        return None
    keys_hash = prov.get("prompt_keys_hash")
    if keys_hash and hash_json(cached.prompt_keys[:n].tolist()) != keys_hash:
        return None
    return {k: np.asarray(v[:n]) for k, v in cached.rows.items()}
