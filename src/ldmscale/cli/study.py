"""``ldmscale study``: the whole study in one resumable command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

STAGE_LIST = "data, autoencoder, train, samples, sweep, confirm, checkpoints, floors, report"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study",
        help="run the whole study: data, autoencoder, training, samples, sweep, report",
        description=(
            "Run (or resume) the study end to end: generate the shapes dataset (or use --data), "
            "train the autoencoder, train every width, sample captioned grids at equal sampling "
            "cost, sweep samplers x steps x guidance, score, and write the HTML report. Every "
            "stage is skipped when its output is complete, so rerunning the same command resumes "
            "an interrupted study; a changed grid, metric set or --n-images reuses the trained "
            "autoencoder and models, a changed autoencoder or training config is refused."
        ),
        epilog=(
            "Metrics with --data: the shapes probe metrics (fd_probe, alignment) need shapes "
            "attributes in every record, so on other data the default is fd_effnet (Frechet "
            "distance on EfficientNet-Lite0 features, not FID: ~22 images/s on 2 CPU cores), "
            "plus clip_score when --clip-model is given; Inception FID (~10 images/s) only on "
            "request (--metrics fid). A preset's own metrics are kept when the data supports "
            "them all. Asked-for metrics the data cannot support are an error before any "
            "training. The primary metric (figures, verdict) is the preset's if chosen, else the "
            "first chosen Frechet distance."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--preset",
        default="tiny",
        choices=["tiny", "trend", "small", "paper"],
        help="tiny: 3 widths on one-object shapes, ~16 min on 2 CPU cores; trend: 3 widths on "
        "the full shapes, 256 images per cell, ~2 h; small: (superseded) Inception FID; paper: "
        "the paper's protocol for a GPU cluster",
    )
    p.add_argument(
        "--task",
        type=lambda s: tuple(t.strip() for t in s.split(",") if t.strip()),
        help="comma-separated study tasks run on the preset's trained widths (their parents): "
        "distill, sr, dreambooth (docs/study.md, 'Tasks'); runs the text-to-image stages they "
        "need (reused when done), then their own; the task's options come from the preset",
    )
    p.add_argument("--config", type=Path, help="a StudyConfig JSON/TOML file (replaces --preset)")
    p.add_argument("--out", help="study folder (default: the preset's, e.g. outputs/study-tiny)")
    p.add_argument(
        "--data",
        type=Path,
        help="your own data instead of the generated shapes: an image folder with train/ and "
        "validation/ metadata.jsonl (file_name, text) or a COCO root (annotations/"
        "captions_{train,val}*.json + images), see docs/data.md; resized to the preset's "
        "resolution",
    )
    p.add_argument(
        "--metrics",
        type=lambda s: tuple(m.strip().replace("-", "_") for m in s.split(",") if m.strip()),
        help="comma-separated metrics (e.g. fd_effnet,fid); default: chosen for the data (below)",
    )
    p.add_argument(
        "--clip-model",
        help="a local CLIP folder (CLIPModel + processor, save_pretrained): adds clip_score",
    )
    p.add_argument(
        "--stages",
        default=None,
        help=f"comma-separated stages to run (earlier outputs are reused); default: all of "
        f"{STAGE_LIST}",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print the plan and its cost, run nothing"
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON")
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="draw no progress bar (dataset checks and weight loading included)",
    )
    p.set_defaults(func=run)


def resolve_config(args: argparse.Namespace):
    """The study config of the command line: the preset or ``--config``, then ``--out``, and
    ``--data`` / ``--metrics`` / ``--clip-model`` with the metrics chosen for the data."""
    from ldmscale.study import StudyConfig, metrics_for_data, preset

    cfg = StudyConfig.load(args.config) if args.config else preset(args.preset)
    if args.out:
        cfg = cfg.replace(out_dir=args.out)
    if args.task:
        from ldmscale.study.tasks import get_task

        options = {t: get_task(t).options(cfg) for t in args.task}
        cfg = cfg.replace(tasks=tuple(args.task), task_options=options)
    if args.data is not None:
        cfg = cfg.replace(data=str(args.data))
    if args.data is not None or args.metrics or args.clip_model:
        cfg, line = metrics_for_data(cfg, args.metrics, args.clip_model)
        print(f"[study] {line}", file=sys.stderr if args.print_config else sys.stdout)
    return cfg


def run(args: argparse.Namespace) -> int:
    from ldmscale.study import dry_run, run_study
    from ldmscale.study.stages import default_stages

    cfg = resolve_config(args)
    if args.print_config:
        print(cfg.to_json())
        return 0
    if args.dry_run:
        print(dry_run(cfg))
        return 0
    stages = default_stages(cfg)
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
