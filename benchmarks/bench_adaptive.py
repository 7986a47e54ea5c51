"""Adaptive guidance search vs the full guidance grid.

Two modes:

* ``--synthetic`` (default): seeded unimodal noisy curves
  (:func:`ldmscale.adaptive.synthetic_rows`): image i at scale w scores
  20 + A (ln w - ln w*)^2 + u_i + e_iw, an image effect u_i shared by all scales (a shared
  prompt and seed) plus independent noise scaled so a scale's mean over N images has std
  ``noise``; w* log-uniform over the grid's range. The grid and the search see the same images
  (the search the first n of them), as in a real sweep.
* ``--config SWEEP.toml``: a real study. Runs (or resumes) the full grid of the sweep into its
  store, runs the adaptive search into the same store, and compares per group. The search's
  images are the first ``n`` prompts/seeds of the grid's; with ``rows_dir`` set in the config
  the grid's per-image rows are cached there and the search reuses them instead of sampling
  again (the same images to float tolerance). With the row cache the script also scores the
  naive baseline at the same budget: every scale on the first ``budget * N`` images.

Measures: the fraction of groups whose adaptive optimum is within one grid step of the full
grid's (target >= 90 %), and images spent relative to the grid (target <= 40 %).

    .venv/bin/python benchmarks/bench_adaptive.py [--groups 1000] [--out results.json]
    .venv/bin/python benchmarks/bench_adaptive.py --config sweep.toml
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np

from ldmscale.adaptive import AdaptiveConfig, adaptive_search, search_guidance, synthetic_rows
from ldmscale.metrics.registry import metric_direction
from ldmscale.rowcache import load_rows
from ldmscale.store import ResultsStore
from ldmscale.sweep import PAPER_GUIDANCE, SweepConfig, metric_statistic, plan_sweep, run_sweep


def synthetic(
    noise: float, groups: int, n_images: int, grid: list[float], curvature: float, seed: int
) -> dict:
    rng = np.random.default_rng(seed)
    adaptive_vs_grid = adaptive_vs_true = grid_vs_true = spent = 0
    for _ in range(groups):
        rows, w_star = synthetic_rows(grid, n_images, noise, curvature, rng)
        truth = min(range(len(grid)), key=lambda i: abs(math.log(grid[i] / w_star)))
        full = int(np.argmin([rows[g].mean() for g in grid]))
        s = search_guidance(grid, lambda g, n, rows=rows: rows[g][:n], np.mean, n_images)
        pick = grid.index(s.choice)
        adaptive_vs_grid += abs(pick - full) <= 1
        adaptive_vs_true += abs(pick - truth) <= 1
        grid_vs_true += abs(full - truth) <= 1
        spent += s.images
    return {
        "noise_at_N": noise,
        "groups": groups,
        "within_one_step_of_grid": adaptive_vs_grid / groups,
        "adaptive_within_one_step_of_truth": adaptive_vs_true / groups,
        "grid_within_one_step_of_truth": grid_vs_true / groups,
        "images_fraction": spent / (groups * len(grid) * n_images),
    }


def smaller_grid(cfg: SweepConfig, metric: str, n: int) -> dict[tuple, float] | None:
    """Each group's best guidance when every scale is scored on the first ``n`` images only
    (from the row cache), or None when the cache lacks them."""
    plan = plan_sweep(cfg)
    sign = 1 if metric_direction(metric) == "min" else -1
    best: dict[tuple, tuple[float, float]] = {}
    for cell in plan.cells:
        cached = load_rows(cfg.rows_dir, cell.family)
        if cached is None or len(cached) < n:
            return None
        value = sign * metric_statistic(metric, cell.protocol)(cached.rows[metric][:n])
        if cell.group not in best or value < best[cell.group][1]:
            best[cell.group] = (cell.guidance, value)
    return {k: g for k, (g, _) in best.items()}


def real(config: str) -> dict:
    cfg = SweepConfig.load(config)
    metric = cfg.metrics[0]
    sign = 1 if metric_direction(metric) == "min" else -1
    with ResultsStore(cfg.store) as store:
        t0 = time.perf_counter()
        run_sweep(cfg, store)
        grid_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = adaptive_search(cfg, store, adaptive=AdaptiveConfig(metric=metric))
        adaptive_s = time.perf_counter() - t0
        rows = [r for r in store.rows() if r["n_images"] == cfg.n_images]
    grid = sorted({float(g) for g in cfg.guidance})
    within = 0
    details = []
    for ch in res.choices:
        group = [
            r
            for r in rows
            if (r["model_hash"], r["sampler"], r["steps"])
            == (ch["model_hash"], ch["sampler"], ch["steps"])
        ]
        best = min(group, key=lambda r: sign * r["metrics"][metric]["value"])
        ok = abs(grid.index(ch["guidance"]) - grid.index(best["guidance"])) <= 1
        within += ok
        details.append(
            {
                "model": ch["model"],
                "sampler": ch["sampler"],
                "steps": ch["steps"],
                "grid_best": best["guidance"],
                "adaptive": ch["guidance"],
                "within_one_step": ok,
            }
        )
    out = {
        "metric": metric,
        "n_images": cfg.n_images,
        "groups": len(res.choices),
        "within_one_step_of_grid": within / max(1, len(res.choices)),
        "images_fraction": res.fraction,
        "cells_computed_by_search": res.computed,
        "grid_wall_s (or resumed)": grid_s,
        "adaptive_wall_s (or resumed)": adaptive_s,
        "groups_detail": details,
    }
    if cfg.rows_dir:
        n_base = int(AdaptiveConfig().budget * cfg.n_images)
        base = smaller_grid(cfg, metric, n_base)
        if base is not None:
            agree = 0
            for d, ch in zip(details, res.choices, strict=True):
                g = base[(ch["model_hash"], ch["sampler"], ch["steps"])]
                d["smaller_grid"] = g
                agree += abs(grid.index(g) - grid.index(d["grid_best"])) <= 1
            out["smaller_grid_images"] = n_base
            out["smaller_grid_within_one_step_of_grid"] = agree / max(1, len(details))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", help="sweep config of a real study (else: synthetic curves)")
    ap.add_argument("--groups", type=int, default=1000)
    ap.add_argument("--n-images", type=int, default=256)
    ap.add_argument("--curvature", type=float, default=8.0, help="A in A (ln w - ln w*)^2")
    ap.add_argument("--noise", default="0.1,0.25,0.5,0.75,1.0", help="metric std at N images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write the results as JSON")
    args = ap.parse_args()
    if args.config:
        results = real(args.config)
        print(json.dumps({k: v for k, v in results.items() if k != "groups_detail"}, indent=2))
        for d in results["groups_detail"]:
            print(
                f"{d['model']:>6} {d['sampler']:>6} {d['steps']:>3} steps: grid w={d['grid_best']:g}"
                f"  adaptive w={d['adaptive']:g}  smaller grid w={d.get('smaller_grid', '-')}"
                f"  {'ok' if d['within_one_step'] else 'MISS'}"
            )
    else:
        grid = list(PAPER_GUIDANCE)
        results = {
            "grid": grid,
            "n_images": args.n_images,
            "curvature": args.curvature,
            "levels": [
                synthetic(float(s), args.groups, args.n_images, grid, args.curvature, args.seed)
                for s in args.noise.split(",")
            ],
        }
        print(f"grid {grid}, N={args.n_images}, curve 20 + {args.curvature} (ln w - ln w*)^2")
        print("noise@N  adaptive~grid  adaptive~truth  grid~truth  images/grid")
        for r in results["levels"]:
            print(
                f"{r['noise_at_N']:7.2f}  {r['within_one_step_of_grid']:13.3f}  "
                f"{r['adaptive_within_one_step_of_truth']:14.3f}  "
                f"{r['grid_within_one_step_of_truth']:10.3f}  {r['images_fraction']:11.3f}"
            )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
