"""Running a study: check everything that can be checked, then each stage that is not done.

Before any stage runs (:func:`preflight`): the data (an image folder or COCO root with both
splits), the metrics against the data (:mod:`ldmscale.study.data`), and every owned stage
output already in the folder against the config it was made with
(:mod:`ldmscale.study.record`). Then :func:`run_study` walks the stages
(:func:`ldmscale.study.stages.build_stages`) in order.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from ldmscale.config import ConfigError
from ldmscale.io import atomic_write_json
from ldmscale.progress import progress_bars
from ldmscale.study.config import StudyConfig
from ldmscale.study.context import StudyResult, StudyRun
from ldmscale.study.data import check_study_metrics
from ldmscale.study.record import LEGACY_FILE, StageRecords
from ldmscale.study.stages import Stage, build_stages, default_stages


def preflight(cfg: StudyConfig, stages: list[Stage]) -> StageRecords:
    """Check the data, the metrics and the folder before any stage runs (module docstring);
    record the config of every owned output that passed. Returns the folder's records."""
    check_study_metrics(cfg)
    records = StageRecords(cfg.root)
    for stage in stages:
        records.check(stage, cfg)
    for stage in stages:
        folder = stage.outputs(cfg) if stage.outputs else None
        if folder is not None and folder.exists():
            records.record(stage, cfg)
    if not (cfg.root / LEGACY_FILE).is_file():
        cfg.save(cfg.root / LEGACY_FILE)  # the config the folder was created with
    return records


def _train_pending_in_workers(run: StudyRun, every: list[Stage], records: StageRecords) -> set[str]:
    """Train every width not yet trained at once, ``cfg.train_workers`` processes at a time
    (:mod:`ldmscale.study.workers`); the loop then finds their stages done. Returns the ids
    of the stages trained."""
    from ldmscale.study.workers import train_in_workers

    cfg = run.cfg
    pending = [s for s in every if s.name == "train" and not s.is_done(run)]
    if not pending:
        return set()
    for stage in pending:
        records.record(stage, cfg)  # owned: recorded before its folder is written
    widths = [int(s.unit[1:]) for s in pending]
    run.log(
        f"[study]   training c={', c='.join(map(str, sorted(widths, reverse=True)))} for "
        f"{cfg.train.steps} steps, {min(cfg.train_workers, len(widths))} at a time (one "
        "process and one thread each; logs in <run>/train.out)"
    )
    train_in_workers(
        [cfg.train_config(c) for c in widths], cfg.train_workers, 1, run.progress, run.log
    )
    return {s.id for s in pending}


def run_study(
    cfg: StudyConfig,
    stages: tuple[str, ...] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> StudyResult:
    """Run (or resume) the study ``cfg``; returns where everything was written.

    ``stages`` restricts the run to those stages (later stages need earlier outputs, which are
    reused when present); None: :func:`~ldmscale.study.stages.default_stages` (every
    text-to-image stage, or with ``cfg.tasks`` the stages the tasks need and their own). ``progress`` False draws no progress bar at all, the libraries'
    weight-loading bars included. ``log`` receives one line per stage and a few per step.
    """
    every = build_stages(cfg)
    names = list(dict.fromkeys(s.name for s in every))
    stages = default_stages(cfg) if stages is None else stages
    unknown = sorted(set(stages) - set(names))
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; stages are {names}")
    cfg.root.mkdir(parents=True, exist_ok=True)
    records = preflight(cfg, every)
    result = StudyResult(
        out_dir=cfg.root,
        data=cfg.data_dir(),
        autoencoder=cfg.vae_dir(),
        runs=[cfg.run_dir(c) for c in cfg.widths],
        samples=[],
        store=Path(cfg.sweep_config().store) if "sweep" in stages else None,
        report=None,
        timings={},
    )
    run = StudyRun(cfg, progress, log, result)
    in_workers: set[str] | None = None  # the train stages the workers trained, once known
    with progress_bars(progress):
        for stage in every:
            if stage.name not in stages:
                continue
            if stage.name not in result.timings:
                log(f"[study] {stage.name} ...")
            t0 = time.perf_counter()
            if stage.name == "train" and cfg.train_workers > 1 and in_workers is None:
                in_workers = _train_pending_in_workers(run, every, records)
            if in_workers and stage.id in in_workers:
                log(f"[study]   {stage.id}: trained (in a worker)")
            elif stage.is_done(run):
                log(f"[study]   {stage.id}: complete, reused")
            else:
                if stage.outputs is not None:  # owned: recorded before its folder is written
                    records.record(stage, cfg)
                stage.run(run)
            records.record(stage, cfg)
            elapsed = time.perf_counter() - t0
            result.timings[stage.name] = round(result.timings.get(stage.name, 0.0) + elapsed, 2)
    atomic_write_json(
        cfg.root / "study.json",
        {"config": cfg.to_dict(), "timings_s": result.timings, "report": str(result.report or "")},
    )
    return result
