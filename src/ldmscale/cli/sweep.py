"""``ldmscale sweep``: run a (model x sampler x steps x guidance) sweep into a results store.

    ldmscale sweep --config sweep.toml [--models DIR,DIR] [--samplers ddim,ddpm,dpmpp]
                   [--steps 4,8,16] [--guidance 1.5,2,3] [--timestep-spacing trailing,leading]
                   [--n-images N] [--seed0 S] [--metrics a,b] [--cells cells.json]
                   [--store results.sqlite] [--executor serial|processes|ray] [--address ADDR]
                   [--dry-run] [--adaptive [--adaptive-budget F]]
    ldmscale sweep export --store results.sqlite (--csv F | --parquet F)

Rerunning the same command resumes: cells already in the store are skipped.

Timestep spacing is a grid dimension: `leading` (SD's) starts a 4-step DDIM chain at t = 751
and a 50-step one at t = 981, so the step count is confounded with the starting noise level;
`trailing` always starts at t = 999 (the CPU presets' choice).

--cells FILE evaluates an explicit list instead of the grid: a JSON list of
[model_path, sampler, steps, guidance, timestep_spacing] entries, e.g.
[["runs/c32/model", "ddim", 50, 3.0, "trailing"]].
"""

from __future__ import annotations

import argparse
import importlib
import json

from ldmscale.cli import UserError
from ldmscale.samplers import SAMPLER_NAMES


def _csv(cast):
    def parse(text: str):
        try:
            return tuple(cast(x.strip()) for x in text.split(",") if x.strip())
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"cannot read {text!r} as a comma list: {e}") from e

    return parse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sweep",
        help="sample and score every model x sampler x steps x guidance cell (resumable)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="sweep config (TOML or JSON, keys of SweepConfig)")
    p.add_argument("--models", type=_csv(str), help="model folders, comma-separated")
    p.add_argument("--samplers", type=_csv(str), help=",".join(SAMPLER_NAMES))
    p.add_argument("--steps", type=_csv(int), help="step counts, e.g. 4,8,16,20,50")
    p.add_argument("--guidance", type=_csv(float), help="CFG scales w (1 = none), e.g. 1.5,2,3")
    p.add_argument(
        "--timestep-spacing",
        type=_csv(str),
        help="timestep spacings to sweep, comma list of leading,trailing,linspace "
        "(default: leading; trailing starts every step count at t = 999)",
    )
    p.add_argument("--seed0", type=int, help="first seed (image i has seed seed0 + i)")
    p.add_argument(
        "--cells",
        help="JSON file: explicit [model, sampler, steps, guidance, spacing] list (not the grid)",
    )
    p.add_argument("--n-images", type=int, help="images per cell")
    p.add_argument("--metrics", type=_csv(str), help="metric names, e.g. fd_probe,alignment")
    p.add_argument("--dataset", help="dataset folder: validation captions and reference images")
    p.add_argument("--clip-model", help="local transformers CLIP folder for the clip_score metric")
    p.add_argument("--batch-size", type=int, help="images per sampling batch")
    p.add_argument("--store", help="results store (SQLite file)")
    p.add_argument(
        "--executor",
        choices=("serial", "processes", "ray"),
        help="serial (this process), processes (--num-cpus one-thread workers) or ray",
    )
    p.add_argument("--address", help="existing Ray cluster address (default: local instance)")
    p.add_argument("--num-cpus", type=int, help="CPUs of a local Ray instance")
    p.add_argument("--dry-run", action="store_true", help="print the plan and a time estimate")
    p.add_argument("--no-calibrate", action="store_true", help="dry run without timing the models")
    p.add_argument("--adaptive", action="store_true", help="adaptive guidance search, not the grid")
    p.add_argument(
        "--adaptive-budget",
        type=float,
        default=0.4,
        help="adaptive: most new images to spend, as a fraction of the grid's (default 0.4)",
    )
    p.add_argument("--rows-dir", help="folder caching per-image metric rows (reused by larger N)")
    p.add_argument("--adaptive-metric", help="adaptive: metric to optimize (default: first)")
    p.add_argument(
        "--evaluator",
        help="MODULE:FUNCTION evaluating a cell (default: ldmscale.sweep:evaluate_cell)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run)

    sub = p.add_subparsers(dest="sweep_action", metavar="ACTION")
    e = sub.add_parser("export", help="export a results store to CSV or Parquet")
    e.add_argument("--store", dest="export_store", required=True, help="results store (SQLite)")
    group = e.add_mutually_exclusive_group(required=True)
    group.add_argument("--csv", help="write a CSV file")
    group.add_argument("--parquet", help="write a Parquet file (needs pyarrow)")
    e.set_defaults(func=export)


def build_config(args: argparse.Namespace):
    from ldmscale.sweep import SweepConfig

    cfg = SweepConfig.load(args.config) if args.config else SweepConfig()
    overrides = {
        "models": args.models,
        "samplers": args.samplers,
        "steps": args.steps,
        "guidance": args.guidance,
        "timestep_spacings": args.timestep_spacing,
        "seed0": args.seed0,
        "n_images": args.n_images,
        "metrics": args.metrics,
        "dataset": args.dataset,
        "clip_model": args.clip_model,
        "batch_size": args.batch_size,
        "store": args.store,
        "rows_dir": args.rows_dir,
        "executor": args.executor,
        "address": args.address,
        "num_cpus": args.num_cpus,
    }
    data = cfg.to_dict()
    data.update(
        {k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items() if v is not None}
    )
    return SweepConfig.from_dict(data)  # overrides get the same checks as the file


def load_settings(path: str | None):
    """The explicit cell list of ``--cells`` (None without it)."""
    if not path:
        return None
    from pathlib import Path

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read --cells {path}: {e}") from e
    if not isinstance(data, list) or not all(isinstance(s, list) for s in data):
        raise UserError(
            f"--cells {path} must be a JSON list of [model, sampler, steps, guidance, spacing]"
        )
    return [tuple(s) for s in data]


def load_evaluator(spec: str | None):
    if not spec:
        return None
    module, _, name = spec.partition(":")
    if not module or not name:
        raise UserError(f"--evaluator must be MODULE:FUNCTION, got {spec!r}")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise UserError(f"cannot load evaluator {spec!r}: {e}") from e


def run(args: argparse.Namespace) -> int:
    from ldmscale.sr_eval import is_sr_model
    from ldmscale.store import ResultsStore
    from ldmscale.sweep import estimate_plan, format_estimate, plan_cells, plan_sweep, run_sweep

    cfg = build_config(args)
    if cfg.models and all(is_sr_model(m) for m in cfg.models):
        return _run_sr(cfg, args)
    evaluate = load_evaluator(args.evaluator)
    if evaluate is None:  # the built-in evaluator scores the registry's metrics only
        from ldmscale.metrics.registry import check_metrics

        check_metrics(cfg.metrics)
    settings = load_settings(args.cells)
    progress = not args.no_progress
    if settings is not None and args.adaptive:
        raise UserError("--cells and --adaptive do not combine: the race searches the grid")
    if args.dry_run:
        plan = plan_sweep(cfg) if settings is None else plan_cells(cfg, settings)
        with ResultsStore(cfg.store) as store:
            est = estimate_plan(plan, store, calibrate=not args.no_calibrate)
        print(format_estimate(est, cfg.batch_size))
        return 0
    if args.adaptive:
        from ldmscale.adaptive import AdaptiveConfig, adaptive_search

        acfg = AdaptiveConfig(metric=args.adaptive_metric, budget=args.adaptive_budget)
        with ResultsStore(cfg.store) as store:
            res = adaptive_search(cfg, store, evaluate, acfg, progress)
        for ch in res.choices:
            print(
                f"{ch['model']:>16} {ch['sampler']:>6} {ch['steps']:>4} steps: best w={ch['guidance']:g} "
                f"({ch['metric']}={ch['value']:.4g} at N={ch['n_images']})"
            )
        print(
            f"adaptive: {res.images} images ({100 * res.fraction:.1f} % of the grid's "
            f"{res.grid_images}); {res.computed} cells computed now; store {cfg.store}"
        )
        return 0
    summary = run_sweep(cfg, evaluate=evaluate, progress=progress, settings=settings)
    print(
        json.dumps(
            {
                "store": cfg.store,
                "cells": summary.planned,
                "already_stored": summary.skipped,
                "computed": summary.computed,
                "wall_s": round(summary.wall_s, 2),
            }
        )
    )
    return 0


def _run_sr(cfg, args: argparse.Namespace) -> int:
    """A sweep of super-resolution models: their LR set instead of prompts, no CFG
    (:func:`ldmscale.sr_eval.plan_sr_sweep`), scored by the SR evaluator."""
    from ldmscale.sr_eval import evaluate_sr_cell, plan_sr_sweep, prepare_sr
    from ldmscale.sweep import run_sweep

    if args.cells or args.adaptive or args.evaluator:
        raise UserError("an SR sweep takes the grid only (no --cells, --adaptive or --evaluator)")
    plan = plan_sr_sweep(cfg)
    if args.dry_run:
        print(f"SR sweep: {len(plan.cells)} cells of {cfg.n_images} images -> {cfg.store}")
        return 0
    summary = run_sweep(
        cfg, evaluate=evaluate_sr_cell, progress=not args.no_progress, plan=plan, prepare=prepare_sr
    )
    print(json.dumps({"store": cfg.store, "cells": summary.planned, "computed": summary.computed}))
    return 0


def export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ldmscale.store import ResultsStore

    if not Path(args.export_store).is_file():
        raise UserError(f"results store not found: {args.export_store}")
    with ResultsStore(args.export_store) as store:
        n = len(store)
        out = store.export_csv(args.csv) if args.csv else store.export_parquet(args.parquet)
    print(f"wrote {n} rows to {out}")
    return 0
