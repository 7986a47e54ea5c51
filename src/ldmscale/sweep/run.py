"""Running cells: evaluate the cells a store lacks, serially or as Ray tasks, and store each.

Each result is written to the :class:`~ldmscale.store.ResultsStore` in its own transaction as
soon as it completes, by this (driver) process only. A rerun skips every cell already stored,
so a killed sweep resumes where it stopped.

Executors: ``serial`` (this process), ``processes`` (``num_cpus`` local worker processes with
one thread each: on a few CPU cores the narrow UNets use two threads poorly, so two one-thread
workers sample about 1.5x as many images per second as one two-thread process) or ``ray``
(cells as Ray tasks on a local instance with ``num_cpus`` CPUs or an existing cluster). Results
come back to the driver, which writes them. All run the same evaluator; with the same thread
count they give the same rows (the last bits of a float sum depend on the thread count).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ldmscale import cost
from ldmscale.io import hash_json
from ldmscale.progress import bars_enabled, progress_bars
from ldmscale.provenance import code_version
from ldmscale.store import ResultsStore
from ldmscale.sweep.config import EXECUTORS, SweepConfig, SweepError
from ldmscale.sweep.plan import Cell, CellResult, Evaluator, Plan, plan_cells, plan_sweep


def cell_row(cell: Cell, result: CellResult) -> dict[str, Any]:
    """The results-store row of an evaluated cell (everything that produced it).

    ``train_step``/``train_compute``/``train_seed`` come from the model folder (None when it
    does not record them; ``train_compute`` falls back to normalized cost x ``train_step``).
    ``provenance["rows_dir"]`` (absolute) names the row cache the cell's per-image rows went to
    and ``provenance["prompt_keys_hash"]`` lets :func:`~ldmscale.sweep.evaluate.cell_rows` check they are this cell's.
    """
    from ldmscale.rowcache import prompt_keys

    norm_cost = cell.model.norm_cost if cell.model.norm_cost is not None else result.norm_cost
    m = cell.model
    train_compute = m.train_compute
    if train_compute is None and m.train_step is not None and norm_cost is not None:
        train_compute = float(norm_cost) * m.train_step
    return {
        "cell_id": cell.cell_id,
        "model": cell.model.name,
        "model_path": cell.model.path,
        "model_hash": cell.model.hash,
        "c": cell.model.c,
        "params": cell.model.params,
        "norm_cost": norm_cost,
        "sampler": cell.sampler,
        "steps": cell.steps,
        "guidance": cell.guidance,
        "n_images": cell.n_images,
        "nfe": result.nfe,
        "sampling_cost": None if norm_cost is None else cost.sampling_cost(norm_cost, cell.steps),
        "flops": result.flops,
        "timestep_spacing": cell.timestep_spacing,
        "seed0": cell.seed0,
        "train_step": m.train_step,
        "train_compute": train_compute,
        "train_seed": m.train_seed,
        "metrics": result.metrics,
        "protocol": cell.protocol,
        "provenance": {
            "model_config": cell.model.config,
            "sampler_config": cell.sampler_config,
            "batch_size": cell.batch_size,
            "seeds": list(cell.seeds),
            "prompts_hash": hash_json(list(cell.prompts)),
            "prompt_keys_hash": hash_json(prompt_keys(cell.prompts).tolist()),
            **({"rows_dir": str(Path(cell.rows_dir).resolve())} if cell.rows_dir else {}),
            "code_version": code_version(),
            "wall_s": result.wall_s,
            **({"extra": result.extra} if result.extra else {}),
        },
    }


@dataclass
class RunSummary:
    """What a run did: cells planned, already stored (skipped), computed now, and seconds."""

    planned: int
    skipped: int
    computed: int
    wall_s: float
    computed_ids: list[str] = field(default_factory=list)


#: A driver-side hook run once before any cell: ``prepare(protocol, progress)`` (the built-in
#: one builds the metrics' probe and reference statistics, so that workers find them on disk).
Prepare = Callable[[dict[str, Any], bool], None]


def _timed(evaluate: Evaluator, cell: Cell, bars: bool = True) -> CellResult:
    """Evaluate one cell and time it. ``bars``: the calling process's progress-bar switch
    (:func:`ldmscale.progress.bars_enabled`), applied here because a spawned or Ray worker
    starts with bars on (``study --no-progress`` would otherwise get the workers' dataset-check
    and weight-loading bars)."""
    t0 = time.perf_counter()
    with progress_bars(bars):
        result = evaluate(cell)
    if not result.wall_s:
        result.wall_s = time.perf_counter() - t0
    return result


def ensure_ray(address: str | None = None, num_cpus: int = 2) -> Any:
    """Connect to Ray once per process: ``address`` (an existing cluster) or a local instance
    with ``num_cpus`` CPUs. Returns the ``ray`` module."""
    try:
        import ray
    except ImportError as e:
        raise SweepError(
            "executor 'ray' needs Ray: `pip install 'ldmscale[ray]'` (or use --executor serial)"
        ) from e
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    return ray


def run_cells(
    cells: Sequence[Cell],
    store: ResultsStore,
    evaluate: Evaluator | None = None,
    executor: str = "serial",
    address: str | None = None,
    num_cpus: int = 2,
    progress: bool = True,
    desc: str = "cells",
    prepare: Prepare | None = None,
) -> RunSummary:
    """Evaluate the cells not yet in ``store`` and write each one as it completes.

    ``evaluate``: the evaluator, run in this process (``serial``) or in Ray workers (``ray``);
    None is the built-in :func:`~ldmscale.sweep.evaluate.evaluate_cell` with its ``prepare``
    hook :func:`~ldmscale.metrics.protocol.prepare_metrics`. ``prepare(protocol, progress)``
    runs once in the driver before the first pending cell. The driver is the only writer. On
    an evaluator error the cells finished so far stay stored and the error is raised (with
    the cell named); rerunning resumes.
    """
    from tqdm import tqdm

    if evaluate is None:
        from ldmscale.metrics.protocol import prepare_metrics
        from ldmscale.sweep.evaluate import evaluate_cell

        evaluate, prepare = evaluate_cell, prepare or prepare_metrics
    if executor not in EXECUTORS:
        raise SweepError(f"unknown executor {executor!r}; choose from {list(EXECUTORS)}")
    t0 = time.perf_counter()
    done = store.cell_ids()
    pending = [c for c in cells if c.cell_id not in done]
    summary = RunSummary(len(cells), len(cells) - len(pending), 0, 0.0)
    if prepare is not None and pending:
        prepare(pending[0].protocol, progress)
    bar = tqdm(total=len(pending), desc=desc, unit="cell", disable=not progress or not pending)

    def finish(cell: Cell, result: CellResult) -> None:
        if store.put(cell_row(cell, result)):
            summary.computed += 1
            summary.computed_ids.append(cell.cell_id)
        bar.set_postfix_str(cell.describe(), refresh=False)
        bar.update(1)

    try:
        if executor == "serial":
            _run_serial(pending, evaluate, finish)
        elif executor == "processes":
            _run_processes(pending, evaluate, num_cpus, finish)
        else:
            _run_ray(pending, evaluate, address, num_cpus, finish)
    finally:
        bar.close()
    summary.wall_s = time.perf_counter() - t0
    return summary


def _failed(cell: Cell, e: BaseException) -> SweepError:
    return SweepError(f"cell {cell.describe()} ({cell.cell_id}) failed: {e}")


def _run_serial(
    pending: Sequence[Cell], evaluate: Evaluator, finish: Callable[[Cell, CellResult], None]
) -> None:
    for cell in pending:
        try:
            result = _timed(evaluate, cell)
        except Exception as e:
            raise _failed(cell, e) from e
        finish(cell, result)


def _one_thread() -> None:
    """Worker initializer of the ``processes`` executor: one torch thread per process."""
    import torch

    torch.set_num_threads(1)


def _run_processes(
    pending: Sequence[Cell],
    evaluate: Evaluator,
    num_cpus: int,
    finish: Callable[[Cell, CellResult], None],
) -> None:
    """Each cell in one of ``num_cpus`` spawned worker processes (one thread each); results
    are finished in completion order. On an error the cells not yet started are cancelled."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    if not pending:
        return
    ctx = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
    with ProcessPoolExecutor(max(1, num_cpus), mp_context=ctx, initializer=_one_thread) as pool:
        bars = bars_enabled()
        futures = {pool.submit(_timed, evaluate, cell, bars): cell for cell in pending}
        remaining = set(futures)
        try:
            while remaining:
                ready, remaining = wait(remaining, return_when=FIRST_COMPLETED)
                for fut in ready:
                    cell = futures[fut]
                    try:
                        result = fut.result()
                    except Exception as e:
                        raise _failed(cell, e) from e
                    finish(cell, result)
        finally:
            for fut in remaining:
                fut.cancel()


def _run_ray(
    pending: Sequence[Cell],
    evaluate: Evaluator,
    address: str | None,
    num_cpus: int,
    finish: Callable[[Cell, CellResult], None],
) -> None:
    """Each cell as a Ray task (1 CPU, no retries); results are finished in completion order."""
    if not pending:
        return
    ray = ensure_ray(address, num_cpus)
    remote = ray.remote(num_cpus=1, max_retries=0)(_timed)
    fn_ref = ray.put(evaluate)
    bars = bars_enabled()
    futures = {remote.remote(fn_ref, cell, bars): cell for cell in pending}
    remaining = list(futures)
    try:
        while remaining:
            ready, remaining = ray.wait(remaining, num_returns=1)
            cell = futures[ready[0]]
            try:
                result = ray.get(ready[0])
            except Exception as e:
                raise _failed(cell, e) from e
            finish(cell, result)
    finally:
        for ref in remaining:
            ray.cancel(ref, force=True)


def run_sweep(
    cfg: SweepConfig,
    store: ResultsStore | None = None,
    evaluate: Evaluator | None = None,
    progress: bool = True,
    plan: Plan | None = None,
    settings: Iterable[Sequence[Any]] | None = None,
    prepare: Prepare | None = None,
) -> RunSummary:
    """Plan ``cfg`` and evaluate the cells missing from the store (``cfg.store`` by default).

    The plan is ``plan`` when given, else the explicit ``settings`` (:func:`plan_cells`) when
    given, else the full grid (:func:`plan_sweep`). Same store, resume and executor either way.
    ``evaluate`` None is the built-in evaluator (:func:`run_cells`); ``prepare`` its driver
    hook (as in :func:`run_cells`).
    """
    if plan is not None and settings is not None:
        raise SweepError("run_sweep: pass a plan or settings, not both")
    if plan is None:
        plan = plan_sweep(cfg) if settings is None else plan_cells(cfg, settings)
    own = store is None
    store = ResultsStore(cfg.store) if own else store
    try:
        return run_cells(
            plan.cells,
            store,
            evaluate,
            cfg.executor,
            cfg.address,
            cfg.num_cpus,
            progress,
            prepare=prepare,
        )
    finally:
        if own:
            store.close()
