"""The study's plan and cost without running it (``ldmscale study --dry-run``).

Per width: parameters, GFLOPs per forward, normalized cost and training compute (the family's
counts, :mod:`ldmscale.family`); the sweep's cells and UNet evaluations (:mod:`ldmscale.cost`);
and, with ``calibrate``, hours on this machine: one training step timed here (random weights)
times the steps, plus each cell's sampling time and metric time as the sweep's estimator
computes them (:mod:`ldmscale.sweep.estimate`) from one timed forward at the CFG-doubled batch.
"""

from __future__ import annotations

import time
from typing import Any

from ldmscale import cost
from ldmscale.study.config import StudyConfig

#: A width whose timed calls would exceed this many GFLOPs is left to the target machine.
MAX_CALIBRATION_GFLOPS = 300


def dry_run(cfg: StudyConfig, calibrate: bool = True) -> str:
    """The study's plan and cost (module docstring) as printable lines; widths too large to
    time here are marked ``(target)`` and leave the total open."""
    from ldmscale.sweep.estimate import format_seconds
    from ldmscale.sweep.plan import grid_settings

    sw = cfg.sweep
    cells = grid_settings(sw)
    latent = cfg.resolution // cfg.autoencoder.downsampling_factor
    lines = [f"Study {cfg.preset!r} -> {cfg.out_dir}"]
    lines.append(
        f"data: {cfg.data or 'shapes'} at {cfg.resolution} px; latent "
        f"{cfg.autoencoder.latent_channels}x{latent}x{latent}; text {cfg.text_encoder.kind} "
        f"({cfg.text_encoder.max_length} tokens)"
    )
    header = f"{'c':>6} {'params':>14} {'GFLOPs/fwd':>11} {'norm cost':>10} {'train compute':>14}"
    lines.append(header + (f" {'est. train':>11} {'est. sweep':>11}" if calibrate else ""))
    evals_per_width = sum(
        cost.unet_evaluations(steps, cost.cfg_evaluations(w), sw.n_images)
        for _, steps, w, _ in cells
    )
    total_s: float | None = 0.0
    train_flops = sweep_flops = 0.0
    for c in cfg.widths:
        line, flops, seconds = _width(cfg, c, cells, calibrate)
        lines.append(line)
        train_flops += flops * 3 * cfg.train.batch_size * cfg.train.steps
        sweep_flops += flops * evals_per_width
        total_s = None if seconds is None or total_s is None else total_s + seconds
    lines.append(
        f"training: {len(cfg.widths)} widths x {cfg.train.steps} steps at batch "
        f"{cfg.train.batch_size} ({cfg.train.batch_size * cfg.train.steps:,} images each)"
        + (
            f", {cfg.train_workers} at a time in one-thread processes"
            if cfg.train_workers > 1
            else ""
        )
    )
    lines.append(
        f"sweep: {len(cells) * len(cfg.widths)} cells ({', '.join(sw.samplers)}; steps "
        f"{list(sw.steps)}; guidance {list(sw.guidance)}; DPM-Solver++ up to "
        f"{sw.dpmpp_max_steps} steps), {sw.n_images} images per cell, "
        f"{len(cfg.widths) * evals_per_width:,} per-image UNet evaluations (CFG counted twice), "
        f"metrics {list(sw.metrics)} (primary {cfg.primary_metric}), executor {sw.executor}"
    )
    from ldmscale.study.tasks import tasks_of

    for task in tasks_of(cfg):
        lines += task.dry_run(cfg) if task.dry_run else []
    lines.append(
        f"UNet compute (dense FLOPs): training {train_flops:.3g} (3x forward per image), "
        f"sweep {sweep_flops:.3g}; VAE, text encoder and metrics not included"
    )
    if calibrate and total_s is not None:
        lines.append(
            f"estimated on this machine: {format_seconds(total_s)} for training + sweep (the "
            "autoencoder, caches, probe and report add a few minutes; timed in this process, "
            "so worker processes finish sooner)"
        )
    elif calibrate:
        lines.append("no full time estimate: the large widths are timed on the target machine")
    return "\n".join(lines)


def _width(
    cfg: StudyConfig, c: int, cells: list[tuple[str, int, float, str]], calibrate: bool
) -> tuple[str, float, float | None]:
    """(table line, dense FLOPs of one forward, estimated seconds of training + sweep or None
    when not timed here) of width ``c``."""
    from ldmscale.family import count_gflops, count_params, normalized_cost
    from ldmscale.sweep.estimate import format_seconds, metric_seconds, sampling_seconds

    spec = _spec(cfg, c)
    norm_cost = normalized_cost(spec)
    line = (
        f"{c:>6} {count_params(spec):>14,} {count_gflops(spec):>11.3f} {norm_cost:>10.4f} "
        f"{norm_cost * cfg.train.steps:>14.1f}"
    )
    dense = count_gflops(spec, "dense")
    sw = cfg.sweep
    if not calibrate:
        return line, dense * 1e9, None
    if dense * max(3 * cfg.train.batch_size, 2 * sw.batch_size) > MAX_CALIBRATION_GFLOPS:
        return line + f" {'(target)':>11} {'(target)':>11}", dense * 1e9, None
    step_s, fwd_s = _time_width(spec, cfg.train.batch_size, 2 * sw.batch_size)
    train_s = step_s * cfg.train.steps
    # every cell timed at the doubled (CFG) batch, no VAE: an upper bound for w = 1
    timing = {"unet_s": fwd_s, "unet_cfg_s": fwd_s}
    sweep_s = sum(
        sampling_seconds(steps, w, sw.n_images, sw.batch_size, timing)
        + metric_seconds(sw.metrics, sw.n_images)
        for _, steps, w, _ in cells
    )
    line += f" {format_seconds(train_s):>11} {format_seconds(sweep_s):>11}"
    return line, dense * 1e9, train_s + sweep_s


def _spec(cfg: StudyConfig, c: int) -> Any:
    from ldmscale.family import UNetSpec

    return UNetSpec(
        c=c,
        context_dim=1024 if cfg.text_encoder.kind == "clip" else 384,  # CLIP-H / MiniLM width
        context_len=cfg.text_encoder.max_length,
        latent_channels=cfg.autoencoder.latent_channels,
        latent_size=cfg.resolution // cfg.autoencoder.downsampling_factor,
        layers_per_block=cfg.train.layers_per_block,
        head_dim=cfg.train.head_dim,
    )


def _time_width(spec: Any, train_batch: int, sample_batch: int) -> tuple[float, float]:
    """Seconds of one AdamW training step at ``train_batch`` (best of two after a warm-up) and
    of one inference forward at ``sample_batch`` (the sweep's timer), random weights."""
    import torch

    from ldmscale.family import build_unet, unet_inputs
    from ldmscale.sweep.estimate import time_unet

    with torch.random.fork_rng():
        torch.manual_seed(0)
        unet = build_unet(spec)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)

    def step() -> float:
        args, kwargs = unet_inputs(spec, "cpu", train_batch)
        t0 = time.perf_counter()
        unet(*args, **kwargs).sample.square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    step()
    step_s = min(step() for _ in range(2))
    unet.eval()
    return step_s, time_unet(unet, sample_batch, spec.context_len, repeats=2)
