"""Inception (FID) feature throughput: the NCHW-contiguous input against channels_last.

Both layouts run the same TorchScript Inception-2015-12-05 network on the same uint8 images,
alternating, and the script prints images/s for each, their ratio, and the largest feature
difference (channels_last is what ``ldmscale.metrics.fid.InceptionFeatures`` uses).

    python benchmarks/bench_metrics.py                  # batch 64, 32 px images, 3 reps
    python benchmarks/bench_metrics.py --batch 32 --size 64 --reps 5
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch

from ldmscale.metrics.common import to_float_nchw
from ldmscale.metrics.fid import load_inception, resize_tf1_bilinear


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64, help="images per forward")
    ap.add_argument("--size", type=int, default=32, help="side of the generated uint8 images")
    ap.add_argument("--reps", type=int, default=3, help="timed forwards per layout")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.batch, args.size, args.size, 3), dtype=np.uint8)
    x = (resize_tf1_bilinear(to_float_nchw(images), 299) - 128.0) / 128.0
    net = load_inception()
    layouts = {"contiguous": x, "channels_last": x.contiguous(memory_format=torch.channels_last)}
    times: dict[str, list[float]] = {k: [] for k in layouts}
    feats = {}
    with torch.inference_mode():
        for inp in layouts.values():
            net(inp[:4])  # warm-up
        for _ in range(args.reps):
            for name, inp in layouts.items():
                t0 = time.perf_counter()
                feats[name] = net(inp)
                times[name].append(time.perf_counter() - t0)
    rate = {k: args.batch / statistics.median(v) for k, v in times.items()}
    diff = (feats["channels_last"] - feats["contiguous"]).abs().max().item()
    scale = feats["contiguous"].abs().max().item()
    print(
        f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} threads, batch {args.batch}, {args.size} px -> 299 px"
    )
    for k, v in rate.items():
        print(f"{k:>14}: {v:6.2f} images/s")
    print(f"channels_last / contiguous speed: {rate['channels_last'] / rate['contiguous']:.2f}x")
    print(f"max |feature difference|: {diff:.2e} (features up to {scale:.2f})")


if __name__ == "__main__":
    main()
