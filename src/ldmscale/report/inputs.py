"""The report's inputs: training logs (Fig. 3's loss fallback, the trained-widths table) and
sample grids (Fig. 10)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ldmscale.modelfolder import MODEL_FILE, ModelLoadError, read_model_meta


class ReportError(ValueError):
    """Inputs the report cannot use; the message says what is missing."""


@dataclass
class SampleGrid:
    """A sample grid image for Fig. 10: ``path`` to a PNG, a caption, and optionally the
    model and sampling cost it was drawn at (norm_cost x steps)."""

    path: Path
    caption: str = ""
    model: str | None = None
    sampling_cost: float | None = None


@dataclass
class TrainingCurve:
    """One run's training log: ``compute`` = normalized cost x iterations (the paper's Fig. 3)."""

    label: str
    c: int | None
    steps: list[int] = field(default_factory=list)
    compute: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)


def read_training_log(run: str | Path) -> TrainingCurve:
    """Read ``<run>/log.jsonl`` (``step, loss, train_compute, ...``) and the width from
    ``<run>/model/ldmscale_model.json`` when the run was exported."""
    run = Path(run)
    log = run / "log.jsonl"
    if not log.is_file():
        raise ReportError(f"{run}: no log.jsonl; pass a run folder written by `ldmscale train`")
    c = norm_cost = None
    if (run / "model" / MODEL_FILE).is_file():
        try:
            meta = read_model_meta(run / "model")
        except ModelLoadError as e:
            raise ReportError(f"{run}: {e}") from e
        c, norm_cost = meta.unet_spec.c, meta.norm_cost
    curve = TrainingCurve(label=f"c={c}" if c is not None else run.name, c=c)
    for line in log.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line of a killed run
        if rec.get("loss") is None or rec.get("step") is None:
            continue
        compute = rec.get("train_compute")
        if compute is None:
            if norm_cost is None:
                continue
            compute = float(norm_cost) * int(rec["step"])
        curve.steps.append(int(rec["step"]))
        curve.compute.append(float(compute))
        curve.loss.append(float(rec["loss"]))
    return curve


def load_sample_grids(folder: str | Path) -> list[SampleGrid]:
    """Sample grids under ``folder``: every ``grid.png`` written by ``save_samples`` (its
    ``samples.json`` supplies model, sampler, steps, guidance, cost and prompts when present);
    if there is none, every ``*.png`` directly in ``folder`` (caption = file name)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"samples folder not found: {folder}")
    grids = []
    for grid in sorted(folder.rglob("grid.png")):
        meta: dict[str, Any] = {}
        js = grid.parent / "samples.json"
        if js.is_file():
            try:
                meta = json.loads(js.read_text())
            except json.JSONDecodeError:
                meta = {}
            if not isinstance(meta, dict):
                meta = {}
        scfg = meta.get("sampler") if isinstance(meta.get("sampler"), dict) else {}
        sampler = scfg.get("name") or (meta.get("sampler") if not scfg else None)
        steps, guidance = (
            scfg.get("steps", meta.get("steps")),
            scfg.get("guidance", meta.get("guidance")),
        )
        prompts = [im.get("prompt") for im in meta.get("images") or [] if isinstance(im, dict)]
        prompts = list(dict.fromkeys(p for p in prompts if p))  # unique, in order
        parts = [str(sampler)] if sampler else []
        if steps:
            parts.append(f"{steps} steps")
        if guidance is not None:
            parts.append(
                f"w={guidance:g}" if isinstance(guidance, int | float) else f"w={guidance}"
            )
        text = ", ".join(parts)
        if prompts:
            shown = "; ".join(prompts[:3])
            text += (
                (" -- " if text else "")
                + f"prompts: {shown}"
                + (" ..." if len(prompts) > 3 else "")
            )
        cost = meta.get("sampling_cost")
        grids.append(
            SampleGrid(
                path=grid,
                caption=text or grid.parent.name,
                model=meta.get("model") or meta.get("model_name") or grid.parent.name,
                sampling_cost=float(cost) if cost is not None else None,
            )
        )
    if not grids:
        grids = [SampleGrid(path=p, caption=p.stem) for p in sorted(folder.glob("*.png"))]
    return grids
