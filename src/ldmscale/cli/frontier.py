"""``ldmscale frontier`` and ``ldmscale best``: the quality-vs-sampling-cost frontier and the
best configuration under a sampling budget (sampling cost = normalized cost x steps).

ldmscale frontier --store results.sqlite [--metric fd_probe] [--select-by fid] [--json]
ldmscale best --store results.sqlite --budget 10 [--metric fd_probe] [--sampler ddim,dpmpp]
"""

from __future__ import annotations

import argparse
import json

from ldmscale.frontier import best, default_metric, frontier_summary, load_rows


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
        help="only these samplers (ddim, ddpm, dpmpp); repeat or comma-separate (default: all)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "frontier",
        help="per-model optimal-guidance curves and the quality-vs-sampling-cost frontier",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p)
    p.set_defaults(func=_frontier)

    b = subparsers.add_parser(
        "best",
        help="best (model, sampler, steps, guidance) with sampling cost <= a budget",
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


def _load(args: argparse.Namespace) -> tuple[list[dict], str]:
    rows = load_rows(args.store)
    return rows, args.metric or default_metric(rows)


def _frontier(args: argparse.Namespace) -> int:
    rows, metric = _load(args)
    summary = frontier_summary(rows, metric, args.select_by, _samplers(args))
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    word = "lower" if summary["direction"] == "min" else "higher"
    print(f"metric: {metric} ({word} is better); optimal guidance by {summary['select_by']}")
    for curve in summary["curves"]:
        print(f"\n{curve['model']} / {curve['sampler']}")
        print(f"  {'cost':>9} {'steps':>5} {'w':>5}  {metric}")
        for p in curve["points"]:
            print(f"  {p['sampling_cost']:9.4g} {p['steps']:5d} {p['guidance']:5g}  {_score(p)}")
    print("\nfrontier (best reachable at each sampling cost):")
    for p in summary["frontier"]:
        print(
            f"  cost {p['sampling_cost']:9.4g}  {p['model']} {p['sampler']} {p['steps']} steps "
            f"w={p['guidance']:g}  {_score(p)}"
        )
    print("\nverdict:")
    for v in summary["verdicts"]:
        print(f"  {v['text']}")
    return 0


def _score(p: dict) -> str:
    if p.get("lo") is None or p.get("hi") is None:
        return f"{p['value']:.4g} (no CI)"
    return f"{p['value']:.4g} [{p['lo']:.4g}, {p['hi']:.4g}]"


def _best(args: argparse.Namespace) -> int:
    rows, metric = _load(args)
    result = best(rows, args.budget, metric, _samplers(args), args.select_by)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.summary())
    return 0
