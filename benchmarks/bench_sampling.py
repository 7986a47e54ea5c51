"""Benchmark: ldmscale's sampler vs diffusers ``StableDiffusionPipeline``, same work, one run.

Both sample the same tiny random SD model (width-scaled UNet from ``ldmscale.family``, tiny
AutoencoderKL, tiny CLIP text encoder) with the same sampler, steps, guidance, seeds and batch,
text encoding and VAE decoding included. Repetitions are interleaved (ours, theirs, ours, ...)
so load changes on a shared machine hit both alike; medians and the ratio are printed, and the
outputs are checked to agree.

    .venv/bin/python benchmarks/bench_sampling.py --c 32 --latent 8 --steps 20 --batch 8 --reps 5 --threads 1
"""

from __future__ import annotations

import argparse
import platform
import statistics
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def build_sd_folder(root: Path, c: int, latent: int, ctx_len: int, ctx_dim: int) -> Path:
    from diffusers import AutoencoderKL, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from ldmscale.family import UNetSpec, build_unet
    from ldmscale.objectives import make_noise_scheduler

    torch.manual_seed(0)
    unet = build_unet(UNetSpec(c=c, context_dim=ctx_dim, context_len=ctx_len, latent_size=latent))
    vae = AutoencoderKL(
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=16,
        layers_per_block=1,
        sample_size=2 * latent,
    )
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in string.ascii_lowercase + string.digits:
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=ctx_len)
    text = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            hidden_size=ctx_dim,
            intermediate_size=2 * ctx_dim,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=len(vocab),
            max_position_embeddings=ctx_len,
        )
    )
    sched = make_noise_scheduler()  # SD's training schedule, as the trainer exports it
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    path = root / "bench-sd"
    pipe.save_pretrained(path)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--c", type=int, default=32)
    ap.add_argument("--latent", type=int, default=8)
    ap.add_argument("--ctx-len", type=int, default=16)
    ap.add_argument("--ctx-dim", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--sampler", choices=("ddim", "ddpm", "dpmpp"), default="ddim")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads (0 = torch's default); 1 avoids OpenMP spin contention on a busy box",
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from diffusers import StableDiffusionPipeline

    from ldmscale.model import load_model
    from ldmscale.samplers import make_scheduler
    from ldmscale.sampling import SamplerConfig, generate

    cfg = SamplerConfig(name=args.sampler, steps=args.steps, guidance=args.guidance)
    prompts = [f"red circle {i}" for i in range(args.batch)]  # fits 16 char tokens
    seeds = list(range(100, 100 + args.batch))
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_sd_folder(Path(tmp), args.c, args.latent, args.ctx_len, args.ctx_dim)
        model = load_model(folder)
        pipe = StableDiffusionPipeline.from_pretrained(
            folder, safety_checker=None, requires_safety_checker=False
        )
        pipe.scheduler = make_scheduler(pipe.scheduler.config, cfg.name, cfg.timestep_spacing)
        pipe.set_progress_bar_config(disable=True)

    def ours() -> np.ndarray:
        return generate(model, prompts, seeds, cfg, batch_size=args.batch, progress=False).images

    def theirs() -> np.ndarray:
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        out = pipe(
            prompts,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            generator=gens,
            output_type="np",
        ).images
        return (out * 255).round().astype(np.uint8)

    a, b = ours(), theirs()  # warm-up, and the same work check
    max_diff = int(np.abs(a.astype(int) - b.astype(int)).max())
    times: dict[str, list[float]] = {"ours": [], "diffusers": []}
    for rep in range(args.reps):
        order = [("ours", ours), ("diffusers", theirs)]
        if rep % 2:
            order.reverse()
        for name, fn in order:
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
            print(f"rep {rep}: {name} {times[name][-1]:.3f} s", file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    cpu = _cpu_model()
    print(f"machine: {cpu}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(
        f"work: UNet c={args.c}, latent 4x{args.latent}x{args.latent}, {args.sampler} "
        f"{args.steps} steps, batch {args.batch}, guidance {args.guidance} "
        f"(doubled batch {2 * args.batch}), {args.reps} interleaved reps"
    )
    print(f"outputs agree: max |uint8 diff| = {max_diff}")
    for k, v in times.items():
        print(f"{k:>10}: median {med[k]:.3f} s  (all: {', '.join(f'{t:.3f}' for t in v)})")
    print(f"ratio ours/diffusers = {med['ours'] / med['diffusers']:.3f}")
    return 0


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
