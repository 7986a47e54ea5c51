"""Dry-run estimates: a plan's cells, images and UNet evaluations, and a calibrated time.

The time of a cell = batches x (steps x one UNet forward at the batch, doubled with CFG, + one
VAE decode) + images x the metrics' seconds per image (the registry's rough figures). The
UNet and VAE are timed on this machine with random weights of each model's architecture.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ldmscale import cost
from ldmscale.metrics.registry import METRICS
from ldmscale.store import ResultsStore
from ldmscale.sweep.models import ModelInfo
from ldmscale.sweep.plan import Plan

#: Seconds per image of a metric outside the registry (a custom evaluator's), for estimates.
DEFAULT_METRIC_SECONDS = 1 / 20


def metric_seconds(metrics: Iterable[str], n_images: int) -> float:
    """Rough seconds to score ``n_images`` images with ``metrics``: the registry's seconds per
    image (:data:`ldmscale.metrics.registry.METRICS`), :data:`DEFAULT_METRIC_SECONDS` for a name
    it does not know."""
    return n_images * sum(
        METRICS[m].seconds_per_image if m in METRICS else DEFAULT_METRIC_SECONDS for m in metrics
    )


def sampling_seconds(
    steps: int,
    guidance: float,
    n_images: int,
    batch_size: int,
    timing: dict[str, float],
    guidance_embedded: bool = False,
) -> float:
    """Seconds to sample ``n_images`` images at ``steps`` and ``guidance`` in batches of
    ``batch_size``: batches x (steps x one UNet forward + one VAE decode). ``timing``: seconds
    of one forward at ``batch_size`` (``unet_s``), at ``2 x batch_size`` (``unet_cfg_s``, used
    when ``w != 1`` doubles the batch, never for a ``guidance_embedded`` model) and of one VAE
    decode of a batch (``vae_s``, 0 if absent), as :func:`calibrate_model` returns them."""
    batches = math.ceil(n_images / batch_size)
    doubled = cost.evaluations_per_step(guidance, guidance_embedded) == 2
    unet_s = timing["unet_cfg_s"] if doubled else timing["unet_s"]
    return batches * (steps * unet_s + timing.get("vae_s", 0.0))


@dataclass
class Estimate:
    """A plan's cost: cells, images and UNet evaluations (all / still missing), and seconds."""

    cells: int
    pending: int
    images: int
    unet_evals: int
    pending_unet_evals: int
    seconds: float
    metric_seconds: float
    per_model: dict[str, dict[str, float]]
    notes: list[str]


def calibrate_model(model: ModelInfo, batch_size: int, repeats: int = 2) -> dict[str, float]:
    """Seconds for one UNet forward at ``batch_size`` and at ``2 x batch_size`` (CFG), and one
    VAE decode of ``batch_size`` latents, timed on this machine with random weights of the
    model's architecture."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    folder = Path(model.path)
    unet_cfg = UNet2DConditionModel.load_config(folder / "unet")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        unet = UNet2DConditionModel.from_config(unet_cfg).eval()
    size = unet.config.sample_size
    h, w = (size, size) if isinstance(size, int) else size
    ctx_len = int((model.config.get("unet_spec") or {}).get("context_len", 77))
    if (model.config.get("text_encoder") or {}).get("max_length"):
        ctx_len = int(model.config["text_encoder"]["max_length"])
    out = {
        "unet_s": time_unet(unet, batch_size, ctx_len, repeats),
        "unet_cfg_s": time_unet(unet, 2 * batch_size, ctx_len, repeats),
    }
    out["vae_s"] = 0.0
    if (folder / "vae" / "config.json").is_file():
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae")).eval()
        z = torch.randn(batch_size, vae.config.latent_channels, h, w)
        with torch.inference_mode():
            vae.decode(z)
            t0 = time.perf_counter()
            vae.decode(z)
        out["vae_s"] = time.perf_counter() - t0
    return out


def time_unet(unet: Any, batch_size: int, context_len: int, repeats: int = 2) -> float:
    """Seconds of one inference forward of a ``UNet2DConditionModel`` at ``batch_size`` (random
    latents and a ``context_len``-token context), the mean of ``repeats`` after a warm-up."""
    import torch

    size = unet.config.sample_size
    h, w = (size, size) if isinstance(size, int) else size
    x = torch.randn(batch_size, unet.config.in_channels, h, w)
    ctx = torch.randn(batch_size, context_len, unet.config.cross_attention_dim)
    t = torch.full((batch_size,), 500)
    with torch.inference_mode():
        unet(x, t, encoder_hidden_states=ctx)  # warm-up
        t0 = time.perf_counter()
        for _ in range(repeats):
            unet(x, t, encoder_hidden_states=ctx)
    return (time.perf_counter() - t0) / repeats


def estimate_plan(
    plan: Plan,
    store: ResultsStore | None = None,
    calibrate: bool = True,
    repeats: int = 2,
    calibrator: Callable[[ModelInfo, int, int], dict[str, float]] | None = None,
) -> Estimate:
    """Count the plan's work and, with ``calibrate``, estimate its serial wall time from a few
    timed UNet forwards per model at the sweep's batch size, plus a rough metric cost."""
    done = store.cell_ids() if store is not None else set()
    pending = [c for c in plan.cells if c.cell_id not in done]
    calibrator = calibrator or calibrate_model
    timings: dict[str, dict[str, float]] = {}
    per_model: dict[str, dict[str, float]] = {}
    seconds = total_metric_s = 0.0
    for cell in pending:
        m = cell.model
        if calibrate and m.hash not in timings:
            timings[m.hash] = calibrator(m, plan.context.batch_size, repeats)
        entry = per_model.setdefault(m.name, {"cells": 0, "unet_evals": 0, "seconds": 0.0})
        entry["cells"] += 1
        entry["unet_evals"] += cell.unet_evals
        metric_s = metric_seconds(cell.protocol.get("metrics", []), cell.n_images)
        total_metric_s += metric_s
        if calibrate:
            t = timings[m.hash]
            cell_s = sampling_seconds(
                cell.steps, cell.guidance, cell.n_images, plan.context.batch_size, t,
                m.guidance_embedded,
            )  # fmt: skip
            entry["seconds"] += cell_s + metric_s
            entry.update({f"calib_{k}": v for k, v in t.items()})
            seconds += cell_s + metric_s
    notes = list(plan.notes)
    if not calibrate:
        notes.append("time not estimated (calibration off)")
    return Estimate(
        cells=len(plan.cells),
        pending=len(pending),
        images=plan.images,
        unet_evals=plan.unet_evals,
        pending_unet_evals=sum(c.unet_evals for c in pending),
        seconds=seconds,
        metric_seconds=total_metric_s,
        per_model=per_model,
        notes=notes,
    )


def format_seconds(s: float) -> str:
    """``s`` seconds as ``"45 s"``, ``"12.5 min"`` or ``"3.2 h"``."""
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def format_estimate(est: Estimate, batch_size: int) -> str:
    """A human-readable plan summary (what ``ldmscale sweep --dry-run`` prints)."""
    lines = [
        f"cells: {est.cells} ({est.pending} not yet in the store)",
        f"images: {est.images}",
        f"UNet evaluations: {est.unet_evals:,} ({est.pending_unet_evals:,} still to run); "
        "one = one image through one step, doubled with CFG",
    ]
    if est.seconds:
        lines.append(
            f"estimated time (serial, this machine, batch {batch_size}): "
            f"{format_seconds(est.seconds)}, of which metrics ~{format_seconds(est.metric_seconds)}"
        )
        for name, e in est.per_model.items():
            lines.append(
                f"  {name}: {int(e['cells'])} cells, {int(e['unet_evals']):,} UNet evals, "
                f"~{format_seconds(e['seconds'])} (UNet forward {e.get('calib_unet_s', 0):.3f} s / "
                f"{e.get('calib_unet_cfg_s', 0):.3f} s with CFG at batch {batch_size})"
            )
    for n in est.notes:
        lines.append(f"note: {n}")
    return "\n".join(lines)
