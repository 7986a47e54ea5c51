"""``ldmscale study``: the whole study in one resumable command."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study",
        help="run the whole study: data, autoencoder, training, samples, sweep, report",
        description=(
            "Run (or resume) the study end to end: generate the shapes dataset (or use --data), "
            "train the autoencoder, train every width, sample captioned grids at equal sampling "
            "cost, sweep samplers x steps x guidance, score, and write the HTML report. Every "
            "stage is skipped when its output is complete, so rerunning the same command resumes "
            "an interrupted study."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--preset",
        default="tiny",
        choices=["tiny", "trend", "small", "paper"],
        help="tiny: 3 widths on one-object shapes, ~16 min on 2 CPU cores; trend: 4 widths on "
        "the full shapes, 256 images per cell, ~4 h; small: (superseded) Inception FID; paper: "
        "the paper's protocol for a GPU cluster",
    )
    p.add_argument("--config", type=Path, help="a StudyConfig JSON/TOML file (replaces --preset)")
    p.add_argument("--out", help="study folder (default: the preset's, e.g. outputs/study-tiny)")
    p.add_argument(
        "--stages",
        default=None,
        help="comma-separated stages to run (earlier outputs are reused); default: all of data, "
        "autoencoder, train, samples, sweep, confirm, checkpoints, floors, report",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print the plan and its cost, run nothing"
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ldmscale.study import STAGES, StudyConfig, dry_run, preset, run_study

    cfg = StudyConfig.load(args.config) if args.config else preset(args.preset)
    if args.out:
        cfg = cfg.replace(out_dir=args.out)
    if args.print_config:
        print(cfg.to_json())
        return 0
    if args.dry_run:
        print(dry_run(cfg))
        return 0
    stages = STAGES
    if args.stages:
        stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    result = run_study(cfg, stages=stages, progress=not args.no_progress)
    print()
    print(f"Study folder:  {result.out_dir}")
    print(f"  dataset:     {result.data}")
    print(f"  autoencoder: {result.autoencoder}")
    for run_dir in result.runs:
        print(f"  model:       {run_dir / 'model'}")
    for s in result.samples:
        print(f"  grid:        {s / 'grid.png'}")
    if result.store:
        print(f"  results:     {result.store}")
    total = sum(result.timings.values())
    print("  time:        " + ", ".join(f"{k} {v:.0f}s" for k, v in result.timings.items()))
    print(f"  total:       {total:.0f} s")
    if result.verdict:
        print("\nVerdict:\n" + result.verdict)
    if result.report:
        print(f"\nReport: {result.report}")
    return 0
