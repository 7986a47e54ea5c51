"""Text alignment and per-attribute accuracy of one model on a shapes dataset (one object).

Samples the first N validation captions (seed i for caption i) with DDIM at the given steps,
trailing spacing, and each guidance scale, and prints whole-image alignment plus the probe's
accuracy per attribute of the first object. Used for the convergence table in docs/study.md:

    python benchmarks/eval_alignment.py DATA MODEL [--n 128] [--steps 16] [--guidance 2,4]
        [--grid out.png]     # also saves a captioned grid of the first 32 images per scale

MODEL is a model folder (``<run>/model`` or a kept checkpoint ``<run>/evals/step-N``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ldmscale.metrics.alignment import text_alignment
from ldmscale.metrics.probe import probe_for_dataset
from ldmscale.model import load_model
from ldmscale.sampling import SamplerConfig, generate, make_grid

ATTRS = ("shape", "color", "size", "position")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("model")
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--guidance", default="2")
    ap.add_argument("--grid", type=Path)
    args = ap.parse_args(argv)
    meta = Path(args.data) / "validation" / "metadata.jsonl"
    recs = [json.loads(line) for line in meta.read_text().splitlines() if line.strip()][: args.n]
    captions = [r["text"] for r in recs]
    targets = [r["attributes"] for r in recs]
    probe = probe_for_dataset(args.data, progress=False)
    model = load_model(args.model)
    for g in (float(x) for x in args.guidance.split(",")):
        cfg = SamplerConfig("ddim", args.steps, g, "trailing")
        res = generate(model, captions, list(range(len(captions))), cfg, 64, progress=False)
        al = text_alignment(res.images, probe, attributes=targets)
        acc = {
            k: float(
                np.mean(
                    [
                        bool(p) and p[0].get(k) == t["objects"][0][k]
                        for p, t in zip(al.predicted, targets)
                    ]
                )
            )
            for k in ATTRS
        }
        print(
            f"{args.model} ddim x{args.steps} w={g}: alignment {al.score:.3f} "
            + " ".join(f"{k} {v:.2f}" for k, v in acc.items()),
            flush=True,
        )
        if args.grid:
            out = args.grid.with_name(f"{args.grid.stem}-w{g}{args.grid.suffix}")
            make_grid(res.images[:32], captions[:32], 8).save(out)


if __name__ == "__main__":
    main()
