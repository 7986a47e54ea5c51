"""The trend study's readings (a) and (e) of issue 7: paired step and sampler comparisons on
the fresh seed set, and the Fig. 3 checkpoint rows (docs/study.md, "What the trend preset shows").

    python benchmarks/trend_readings.py outputs/study-trend    # from the study's parent folder
"""

import sys

from ldmscale.paired import RowSource, compare_rows
from ldmscale.store import ResultsStore

S = sys.argv[1] if len(sys.argv) > 1 else "outputs/study-trend"
rows = ResultsStore(f"{S}/results.sqlite").rows()
src = RowSource(f"{S}/rows")


def cell(c, sampler, steps, w, seed0=10000, step=None):
    got = [
        r
        for r in rows
        if r["c"] == c
        and r["sampler"] == sampler
        and r["steps"] == steps
        and abs(r["guidance"] - w) < 1e-9
        and r["seed0"] == seed0
        and r.get("timestep_spacing") == "trailing"
        and (r.get("train_step") in (None, 2000) if step is None else r.get("train_step") == step)
    ]
    return got[0] if got else None


def cmp(a, b, metric):
    d = "min" if metric == "fd_probe" else "max"
    r = compare_rows(a, b, metric, d, src, n_boot=1000)
    return (
        f"{r.diff:+.3g} [{r.lo:+.3g}, {r.hi:+.3g}] ({r.method}, {r.outcome})"
        if r.lo is not None
        else f"{r.diff:+.3g} ({r.method})"
    )


print(
    "(a) c=32 steps, w=2, fresh seeds: fd_probe and alignment, and paired 32-vs-4 / 8-vs-4 / 32-vs-8"
)
for s in ("ddim", "ddpm", "dpmpp"):
    cs = {n: cell(32, s, n, 2.0) for n in (4, 8, 16, 32)}
    print(
        " ",
        s,
        {
            n: (
                round(r["metrics"]["fd_probe"]["value"], 1),
                round(r["metrics"]["alignment"]["value"], 3),
            )
            for n, r in cs.items()
            if r
        },
    )
    for a, b in ((8, 4), (32, 8), (16, 4)):
        if cs.get(a) and cs.get(b):
            print(
                f"    {a} - {b} steps: fd_probe {cmp(cs[a], cs[b], 'fd_probe')}; alignment {cmp(cs[a], cs[b], 'alignment')}"
            )
print("(e) DDPM - DDIM at equal steps, w=2, fresh seeds")
for c in (8, 16, 32):
    for n in (4, 8):
        a, b = cell(c, "ddpm", n, 2.0), cell(c, "ddim", n, 2.0)
        if a and b:
            print(
                f"  c={c} {n} steps: fd_probe {cmp(a, b, 'fd_probe')}; alignment {cmp(a, b, 'alignment')}"
            )
print("Fig. 3 rows (checkpoints, DDIM 16 trailing w=2):")
ck = sorted(
    (
        r
        for r in rows
        if r.get("train_step") is not None
        and r["sampler"] == "ddim"
        and r["steps"] == 16
        and abs(r["guidance"] - 2) < 1e-9
    ),
    key=lambda r: (r["c"], r["train_step"], r["seed0"]),
)
for r in ck:
    m = r["metrics"]
    print(
        f"  c={r['c']:>2} step {r['train_step']:>5} compute {r['train_compute']:.4g} seed0 {r['seed0']}: fd_probe {m['fd_probe']['value']:.1f} [{m['fd_probe']['lo']:.1f}, {m['fd_probe']['hi']:.1f}] alignment {m['alignment']['value']:.3f} [{m['alignment']['lo']:.3f}, {m['alignment']['hi']:.3f}]"
    )
print("errors:", src.errors[:2])
