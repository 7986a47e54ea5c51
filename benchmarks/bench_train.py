"""Training throughput (images/s) per width, each speed lever measured side by side.

One optimisation step as :func:`ldmscale.train.train` runs it (the t2i objective on random
caches at the study's shapes: latent 4x8x8, context 24 x 384, ``layers_per_block=1``, fp32,
gradient clipping, AdamW from :func:`ldmscale.train.make_optimizer`, the EMA update), timed for
a baseline and for each lever on top of it. Variants run interleaved block by block in one
process, so a busy machine slows all of them alike; the table reports the median over blocks
and each variant's ratio to the baseline of the same width.

    python benchmarks/bench_train.py                       # widths 8,32; all levers but compile
    python benchmarks/bench_train.py --widths 8,16,32 --levers batch2,batch4,fused
    python benchmarks/bench_train.py --levers compile      # adds minutes of compile time

Baseline: the batch given by ``--batch`` (32, the old tiny preset's), foreach AdamW, SDPA attention, SD's 8 heads,
the thread count torch picked. Prints a Markdown table to paste into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch

from ldmscale.family import UNetSpec, build_unet
from ldmscale.objectives import TextToImage, make_noise_scheduler
from ldmscale.train import EMA, TrainConfig, make_optimizer

LEVERS = {
    "batch2": "2x the batch (images/s; the learning rate is a separate question)",
    "batch4": "4x the batch",
    "fused": "AdamW(fused=True) instead of foreach",
    "clip_foreach": "clip_grad_norm_(foreach=True) instead of the per-tensor loop",
    "channels_last": "UNet weights and inputs in channels_last",
    "attn_classic": "diffusers AttnProcessor (baddbmm + softmax) instead of SDPA",
    "head_dim16": "16-channel heads (UNetSpec.head_dim=16) instead of 8 heads",
    "no_ema": "no EMA update (its cost)",
    "threads1": "torch.set_num_threads(1) during the step",
    "compile": "torch.compile(unet) (inductor); compile time excluded",
    "tiny_preset": "the tiny preset's choices together: 4x the batch, head_dim 16, v + Min-SNR",
}
DEFAULT_LEVERS = [k for k in LEVERS if k != "compile"]


class Variant:
    """One training step of one configuration, ready to be timed."""

    def __init__(self, c: int, batch: int, lever: str | None):
        self.lever = lever
        self.batch = batch * {"batch2": 2, "batch4": 4, "tiny_preset": 4}.get(lever or "", 1)
        spec = UNetSpec(
            c=c,
            context_dim=384,
            context_len=24,
            latent_channels=4,
            latent_size=8,
            layers_per_block=1,
            head_dim=16 if lever in ("head_dim16", "tiny_preset") else 0,
        )
        torch.manual_seed(0)
        self.unet = build_unet(spec)
        if lever == "attn_classic":
            from diffusers.models.attention_processor import AttnProcessor

            self.unet.set_attn_processor(AttnProcessor())
        fmt = torch.channels_last if lever == "channels_last" else torch.contiguous_format
        self.unet = self.unet.to(memory_format=fmt)
        self.model = torch.compile(self.unet) if lever == "compile" else self.unet
        cfg = TrainConfig(lr=1e-4, fused_adamw=lever == "fused")
        self.optimizer = make_optimizer(cfg, self.unet.parameters())
        self.ema = None if lever == "no_ema" else EMA(self.unet, 0.999)
        prediction_type = "v_prediction" if lever == "tiny_preset" else "epsilon"
        self.objective = TextToImage(
            make_noise_scheduler(prediction_type),
            null_embedding=torch.zeros(1, 24, 384),
            scaling_factor=1.0,
            prediction_type=prediction_type,
            caption_dropout=0.1,
            min_snr_gamma=5.0 if lever == "tiny_preset" else 0.0,
        )
        g = torch.Generator().manual_seed(0)
        n = self.batch
        self.rows = {
            "latent_mean": torch.randn(n, 4, 8, 8, generator=g).to(memory_format=fmt),
            "latent_std": torch.rand(n, 4, 8, 8, generator=g) * 0.1,
            "embeddings": torch.randn(n, 24, 384, generator=g),
        }
        self.gen = torch.Generator().manual_seed(1)

    def step(self) -> None:
        threads = torch.get_num_threads()
        if self.lever == "threads1":
            torch.set_num_threads(1)
        loss = self.objective.loss(self.model, self.rows, self.gen)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(
            self.unet.parameters(), 1.0, foreach=self.lever == "clip_foreach" or None
        )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.unet)
        torch.set_num_threads(threads)


def time_block(step: Callable[[], None], n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t) / n


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--widths", default="8,32")
    ap.add_argument("--batch", type=int, default=32, help="baseline global batch")
    ap.add_argument("--levers", default=",".join(DEFAULT_LEVERS), help="comma list or 'all'")
    ap.add_argument("--steps", type=int, default=5, help="steps per timed block")
    ap.add_argument("--reps", type=int, default=5, help="timed blocks per variant")
    args = ap.parse_args(argv)
    levers = list(LEVERS) if args.levers == "all" else [s for s in args.levers.split(",") if s]
    unknown = sorted(set(levers) - set(LEVERS))
    if unknown:
        ap.error(f"unknown levers {unknown}; choose from {sorted(LEVERS)}")
    print(
        f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print("\n| c | variant | batch | img/s | x baseline |\n| --- | --- | --- | --- | --- |")
    for c in (int(w) for w in args.widths.split(",")):
        variants = {"baseline": Variant(c, args.batch, None)}
        for lever in levers:
            variants[lever] = Variant(c, args.batch, lever)
        warm: dict[str, float] = {}
        for name, v in variants.items():  # warm-up (compile happens here)
            t = time.perf_counter()
            for _ in range(2):
                v.step()
            warm[name] = time.perf_counter() - t
        per_img: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.reps):  # interleaved: every variant once per round
            for name, v in variants.items():
                per_img[name].append(time_block(v.step, args.steps) / v.batch)
        base = statistics.median(per_img["baseline"])
        for name, v in variants.items():
            med = statistics.median(per_img[name])
            note = f" (warm-up {warm[name]:.0f} s)" if name == "compile" else ""
            print(f"| {c} | {name}{note} | {v.batch} | {1 / med:.0f} | {base / med:.2f} |")


if __name__ == "__main__":
    main()
