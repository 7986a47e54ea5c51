"""``ldmscale frontier`` and ``ldmscale best``: the quality-vs-sampling-cost frontier, the
paper's equal-cost verdict per sampler, and the best configuration under a sampling budget
(sampling cost = normalized cost x steps).

ldmscale frontier --store results.sqlite [--metric fd_probe] [--select-by fid] [--json]
ldmscale best --store results.sqlite --budget 10 [--metric fd_probe] [--sampler ddim,dpmpp]

Optima are chosen on seed set --select-seed0 (default 0) and reported on the fresh seed set
--report-seed0 (default: the other seed set stored, if any). Winners are decided by a paired
bootstrap over the per-image rows of the row cache (--rows-dir, default <store>.rows), or by
CI overlap (a weaker test) when rows are missing. Floors come from --floors (default:
floors.json beside the store).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ldmscale.frontier import (
    best,
    default_metric,
    default_report_seed0,
    floor_text,
    frontier_summary,
    load_floors,
    load_rows,
)
from ldmscale.paired import RowSource
from ldmscale.samplers import SAMPLER_NAMES


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--store", required=True, help="results store (SQLite) or a .json/.jsonl rows file"
    )
    p.add_argument(
        "--metric", help="metric to rank by (default: the one stored on most cells, e.g. fd_probe)"
    )
    p.add_argument(
        "--select-by", help="metric that picks the optimal guidance (default: --metric; paper: fid)"
    )
    p.add_argument(
        "--sampler",
        action="append",
        help=f"only these samplers ({', '.join(SAMPLER_NAMES)}); repeat or comma-separate (default: all)",
    )
    p.add_argument(
        "--spacing", help="timestep spacing of the verdicts (default: the most stored one)"
    )
    p.add_argument("--select-seed0", type=int, default=0, help="seed set the guidance is chosen on")
    p.add_argument(
        "--report-seed0",
        default="auto",
        help="fresh seed set the optima are reported on (default auto: the other stored one; "
        "'none': report on the selecting images, biased)",
    )
    p.add_argument("--rows-dir", help="per-image row cache (default: <store>.rows)")
    p.add_argument("--floors", help="floors.json (default: floors.json beside the store)")
    p.add_argument("--n-boot", type=int, default=200, help="paired bootstrap resamples")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "frontier",
        help="per-model optimal-guidance curves, the frontier and the equal-cost verdicts",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p)
    p.set_defaults(func=_frontier)

    b = subparsers.add_parser(
        "best",
        help="best (width, sampler, steps, guidance) with sampling cost <= a budget",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(b)
    b.add_argument(
        "--budget", type=float, required=True, help="max sampling cost (normalized cost x steps)"
    )
    b.set_defaults(func=_best)


def _samplers(args: argparse.Namespace) -> list[str] | None:
    if not args.sampler:
        return None
    return [s.strip() for item in args.sampler for s in item.split(",") if s.strip()]


def resolve_inputs(
    store: str | Path,
    rows: list[dict],
    select_seed0: int = 0,
    report_seed0: str | int | None = "auto",
    rows_dir: str | Path | None = None,
    floors: str | Path | None = None,
) -> tuple[int | None, RowSource, dict | None]:
    """The defaults the frontier/best/report commands share: the fresh seed set (``"auto"``:
    the other stored one), the row cache (``<store>.rows``) and ``floors.json`` beside the
    store (None when absent)."""
    if report_seed0 in (None, "none"):
        rs0 = None
    elif report_seed0 == "auto":
        rs0 = default_report_seed0(rows, select_seed0)
    else:
        rs0 = int(report_seed0)
    store = Path(store)
    source = RowSource(rows_dir or Path(f"{store}.rows"))
    fl = Path(floors) if floors else store.parent / "floors.json"
    return rs0, source, load_floors(fl) if (floors or fl.is_file()) else None


def _load(args: argparse.Namespace) -> tuple[list[dict], str, int | None, RowSource, dict | None]:
    rows = load_rows(args.store)
    rs0, source, floors = resolve_inputs(
        args.store, rows, args.select_seed0, args.report_seed0, args.rows_dir, args.floors
    )
    return rows, args.metric or default_metric(rows), rs0, source, floors


def _frontier(args: argparse.Namespace) -> int:
    rows, metric, rs0, source, floors = _load(args)
    s = frontier_summary(
        rows,
        metric,
        args.select_by,
        _samplers(args),
        args.spacing,
        args.select_seed0,
        rs0,
        source,
        floors,
        args.n_boot,
    )
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    word = "lower" if s["direction"] == "min" else "higher"
    print(
        f"metric: {metric} ({word} is better); optimal guidance by {s['select_by']} on seed set "
        f"{s['select_seed0']}, reported on "
        + (f"seed set {rs0} (fresh)" if rs0 is not None else "the same images (biased)")
        + f"; verdicts at {s['spacing']} spacing"
    )
    if s["floors"]:
        print("floors (best possible values):")
        for kind, f in s["floors"].items():
            print(f"  {floor_text(kind, f)}")
    for curve in s["curves"]:
        tag = "" if curve["primary"] else "  [control, not in the verdicts]"
        print(f"\n{curve['label']} / {curve['sampler']} / {curve['spacing']} spacing{tag}")
        print(f"  {'cost':>9} {'steps':>5} {'w':>5}  {'edge':<10} {'fresh':<5}  {metric}")
        for p in curve["points"]:
            edge = f"{p['at_edge'].upper()} EDGE" if p["at_edge"] else ""
            fresh = "yes" if p["fresh"] else "NO"
            print(
                f"  {p['sampling_cost']:9.4g} {p['steps']:5d} {p['guidance']:5g}  {edge:<10} "
                f"{fresh:<5}  {_score(p)}"
            )
    print(f"\n{s['edge_text']}")
    print(s["fresh_text"])
    print("\nfrontier (best reachable at each sampling cost):")
    for p in s["frontier"]:
        print(
            f"  cost {p['sampling_cost']:9.4g}  {p['label']} {p['sampler']} {p['steps']} steps "
            f"w={p['guidance']:g}  {_score(p)}"
        )
    print("\nequal-cost verdict per sampler (the paper's Fig. 9/11):")
    for block in s["equal_cost"].values():
        print(f"  {block['text']}")
        for m in block["rows"]:
            big, small, d = m["larger"], m["smaller"], m["comparison"]
            print(
                f"    cost {m['budget']:8.4g}: {big['label']} {big['steps']} steps vs "
                f"{small['label']} {small['steps']} steps (cost ratio {m['cost_ratio']:.2f}): "
                f"{m['winner'] or 'tie'}; larger - smaller {_diff(d)}"
            )
    print("\nbest within each budget (all samplers):")
    for v in s["verdicts"]:
        print(f"  {v['text']}")
    if s["methods"].get("ci_overlap") or s["methods"].get("point"):
        print(
            "\nnote: some comparisons had no per-image rows and used CI overlap, a weaker test "
            "than the paired bootstrap"
        )
        if source.errors:  # e.g. a relative reference path: run from the study's folder
            print(f"  first reason: {source.errors[0]}")
    return 0


def _score(p: dict) -> str:
    if p.get("lo") is None or p.get("hi") is None:
        return f"{p['value']:.4g} (no CI)"
    return f"{p['value']:.4g} [{p['lo']:.4g}, {p['hi']:.4g}]"


def _diff(d: dict) -> str:
    if d["method"] == "paired":
        return f"{d['diff']:+.4g} [{d['lo']:+.4g}, {d['hi']:+.4g}] (paired)"
    if d["method"] == "ci_overlap":
        return f"{d['diff']:+.4g} (CI overlap, weaker test)"
    return f"{d['diff']:+.4g} (point estimate only)"


def _best(args: argparse.Namespace) -> int:
    rows, metric, rs0, source, _floors = _load(args)
    result = best(
        rows,
        args.budget,
        metric,
        _samplers(args),
        args.select_by,
        args.spacing,
        args.select_seed0,
        rs0,
        source,
        args.n_boot,
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.summary())
    return 0
