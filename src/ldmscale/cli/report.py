"""``ldmscale report``: the HTML report (figures, tables, verdict) of a finished sweep.

ldmscale report --store results.sqlite --runs runs/c8,runs/c16 --samples samples/ --out report/

Floors come from --floors (default: floors.json beside the store); per-image rows for the
paired verdicts from --rows-dir (default: <store>.rows, else the folder each row names).
"""

from __future__ import annotations

import argparse
import dataclasses

from ldmscale.cli.frontier import resolve_inputs
from ldmscale.frontier import load_rows
from ldmscale.report import build_report, load_sample_grids


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report",
        help="write the HTML report with the paper's figures and a budget verdict",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--store", required=True, help="results store (SQLite) or a .json/.jsonl rows file"
    )
    p.add_argument("--runs", default="", help="comma-separated training run folders (Fig. 3)")
    p.add_argument("--samples", help="folder of sample grids (grid.png + samples.json) for Fig. 10")
    p.add_argument("--out", required=True, help="report folder to write (replaced atomically)")
    p.add_argument("--metric", help="primary metric (default: the one stored on most cells)")
    p.add_argument("--select-by", help="metric that picks the optimal guidance (default: --metric)")
    p.add_argument("--spacing", help="timestep spacing of the verdicts (default: most stored)")
    p.add_argument("--select-seed0", type=int, default=0, help="seed set guidance is chosen on")
    p.add_argument(
        "--report-seed0",
        default="auto",
        help="fresh seed set optima are reported on (default auto: the other stored one; none)",
    )
    p.add_argument("--rows-dir", help="per-image row cache (default: <store>.rows)")
    p.add_argument("--floors", help="floors.json (default: floors.json beside the store)")
    p.add_argument(
        "--quality-setting",
        help="Table 1's fixed setting as sampler,steps,guidance (default: see docs/report.md)",
    )
    p.add_argument("--n-boot", type=int, default=200, help="paired bootstrap resamples")
    p.add_argument("--title", default="ldmscale: model size vs sampling cost", help="report title")
    p.add_argument(
        "--no-paper-table",
        action="store_true",
        help="skip the paper-scale family table (Table 1), which is computed on the meta device",
    )
    p.set_defaults(func=_report)


def _paper_table() -> list[dict] | None:
    try:
        from ldmscale.family import family_table
    except ImportError:
        return None
    out = []
    for r in family_table():
        if dataclasses.is_dataclass(r):
            r = dataclasses.asdict(r)
        out.append(dict(r))
    return out


def _report(args: argparse.Namespace) -> int:
    rows = load_rows(args.store)
    rs0, source, floors = resolve_inputs(
        args.store, rows, args.select_seed0, args.report_seed0, args.rows_dir, args.floors
    )
    setting = None
    if args.quality_setting:
        try:
            s, n, w = args.quality_setting.split(",")
            setting = (s.strip(), int(n), float(w))
        except ValueError as e:
            raise ValueError(
                f"--quality-setting must be sampler,steps,guidance (e.g. ddim,50,3), got "
                f"{args.quality_setting!r}"
            ) from e
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    grids = load_sample_grids(args.samples) if args.samples else []
    path = build_report(
        rows,
        runs,
        grids,
        args.out,
        family_table=None if args.no_paper_table else _paper_table(),
        title=args.title,
        primary_metric=args.metric,
        select_by=args.select_by,
        floors=floors,
        spacing=args.spacing,
        select_seed0=args.select_seed0,
        report_seed0=rs0,
        source=source,
        quality_setting=setting,
        n_boot=args.n_boot,
    )
    print(f"report written: {path}")
    return 0
