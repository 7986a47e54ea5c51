"""UNet forward and training-step throughput per width, against this machine's matmul peak.

Model-FLOP utilisation (MFU) = achieved FLOP/s / peak FLOP/s, where the model FLOPs are the
``dense`` count of ``ldmscale.family.count_gflops`` (forward; a training step counts 3x the
forward: forward + backward w.r.t. activations + backward w.r.t. weights) and the peak is the
best of a few large square matmuls timed here, in the same dtype.

    python benchmarks/bench_unet.py                     # widths 16 32 64 128, latent 8, batch 32
    python benchmarks/bench_unet.py --widths 32,64 --latent 16 --batch 16 --reps 5

Prints a Markdown table (paste it into BENCHMARKS.md with the command and machine).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from ldmscale.family import UNetSpec, build_unet, count_gflops


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    """Best FLOP/s of an ``n x n`` by ``n x n`` matmul in ``dtype`` (2 n^3 FLOPs each)."""
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def timed(fn, reps: int) -> float:
    """Median seconds of ``fn()`` over ``reps`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_width(spec: UNetSpec, batch: int, reps: int, bf16: bool) -> dict[str, float]:
    torch.manual_seed(0)
    unet = build_unet(spec)
    x = torch.randn(batch, spec.latent_channels, spec.latent_size, spec.latent_size)
    ctx = torch.randn(batch, spec.context_len, spec.context_dim)
    t = torch.randint(0, 1000, (batch,))
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)

    def forward() -> None:
        with torch.inference_mode(), autocast():
            unet(x, t, encoder_hidden_states=ctx)

    def train_step() -> None:
        with autocast():
            out = unet(x, t, encoder_hidden_states=ctx).sample
        loss = torch.nn.functional.mse_loss(out.float(), x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    unet.eval()
    fwd_s = timed(forward, reps)
    unet.train()
    step_s = timed(train_step, reps)
    flops_fwd = count_gflops(spec, "dense") * 1e9 * batch
    return {
        "fwd_img_s": batch / fwd_s,
        "step_img_s": batch / step_s,
        "fwd_flops_s": flops_fwd / fwd_s,
        "step_flops_s": 3 * flops_fwd / step_s,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--widths", default="16,32,64,128")
    p.add_argument("--latent", type=int, default=8, help="latent side (4 channels)")
    p.add_argument("--context-len", type=int, default=24)
    p.add_argument("--context-dim", type=int, default=384)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--dtypes", default="fp32,bf16")
    args = p.parse_args()

    cpu = platform.processor() or platform.machine()
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu}")
    peaks = {}
    for name in args.dtypes.split(","):
        dtype = torch.float32 if name == "fp32" else torch.bfloat16
        peaks[name] = matmul_peak(dtype)
        print(f"# {name} matmul peak (2048^2): {peaks[name] / 1e9:.1f} GFLOP/s")
    print()
    print(
        "| c | dtype | GFLOPs/img (fwd, dense) | forward img/s | forward MFU | train-step img/s | train MFU |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for c in (int(w) for w in args.widths.split(",")):
        spec = UNetSpec(
            c=c,
            context_dim=args.context_dim,
            context_len=args.context_len,
            latent_size=args.latent,
        )
        g = count_gflops(spec, "dense")
        for name, peak in peaks.items():
            r = bench_width(spec, args.batch, args.reps, bf16=name == "bf16")
            print(
                f"| {c} | {name} | {g:.3f} | {r['fwd_img_s']:.1f} | "
                f"{100 * r['fwd_flops_s'] / peak:.1f} % | {r['step_img_s']:.1f} | "
                f"{100 * r['step_flops_s'] / peak:.1f} % |",
                flush=True,
            )


if __name__ == "__main__":
    main()
