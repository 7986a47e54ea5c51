"""Checkpoints: written atomically, verified by the SHA-256 list in their ``meta.json``.

``<run>/checkpoints/step-NNNNNNN/`` holds ``unet/`` and ``unet_ema/`` (diffusers
``save_pretrained``, safetensors), ``training_state.pt`` (:data:`STATE_FILE`: step, images
seen, optimizer, LR schedule, EMA counter, wall time, log accumulator and the objective's own
state under ``"objective"``; read with ``torch.load(..., weights_only=True)``) and
``meta.json`` (step, process count, code version, size + SHA-256 of every file).
``<run>/checkpoints/LATEST`` names the newest one and is replaced last. Checkpoints written
before the objective state existed (and with the unused ``epoch``/``rng`` keys) still load.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from ldmscale.io import atomic_path, atomic_write_text, sha256_file
from ldmscale.provenance import code_version
from ldmscale.train.config import CheckpointError
from ldmscale.train.ema import EMA

STATE_FILE = "training_state.pt"
LATEST = "LATEST"


def checkpoint_name(step: int) -> str:
    return f"step-{step:07d}"


def checkpoint_dirs(ckdir: Path) -> list[Path]:
    """Complete-looking checkpoint folders, newest first."""
    if not ckdir.is_dir():
        return []
    dirs = [p for p in ckdir.glob("step-*") if p.is_dir() and p.name[5:].isdigit()]
    return sorted(dirs, key=lambda p: int(p.name[5:]), reverse=True)


def remove_partial_checkpoints(ckdir: Path) -> None:
    """Delete the half-written ``.step-*.tmp`` folders a killed run left behind."""
    for tmp in ckdir.glob(".step-*.tmp") if ckdir.is_dir() else []:
        shutil.rmtree(tmp, ignore_errors=True)


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """Check every file against the sizes and SHA-256 sums in ``meta.json``; return the meta."""
    fix = (
        f"Delete {path} to resume from the previous checkpoint, or rerun with --overwrite to "
        "start the run afresh."
    )
    meta_path = path / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
        files = meta["files"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(
            f"checkpoint {path}: {meta_path} is missing or unreadable ({e}). {fix}"
        ) from e
    for rel, info in files.items():
        f = path / rel
        if not f.is_file():
            raise CheckpointError(f"checkpoint {path}: file {f} is missing. {fix}")
        size = f.stat().st_size
        if size != info["size"]:
            raise CheckpointError(
                f"checkpoint {path}: file {f} has {size} bytes, expected {info['size']} "
                f"(truncated or overwritten). {fix}"
            )
        if sha256_file(f) != info["sha256"]:
            raise CheckpointError(f"checkpoint {path}: file {f} fails its SHA-256 check. {fix}")
    return meta


def find_resume_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint that verifies; warns about and skips corrupt newer ones.

    Returns None when the run has no checkpoint; raises :class:`CheckpointError` when it
    has some but none is complete.
    """
    ckdir = run_dir / "checkpoints"
    candidates = checkpoint_dirs(ckdir)
    latest_file = ckdir / LATEST
    if latest_file.is_file():
        name = latest_file.read_text().strip()
        if not (ckdir / name).is_dir():
            warnings.warn(
                f"{latest_file} names {name!r}, which does not exist; using the newest complete "
                "checkpoint instead",
                stacklevel=2,
            )
    problems = []
    for path in candidates:
        try:
            verify_checkpoint(path)
        except CheckpointError as e:
            problems.append(str(e))
            warnings.warn(f"{e} Falling back to an earlier checkpoint.", stacklevel=2)
            continue
        return path
    if problems:
        raise CheckpointError(
            f"run {run_dir} has checkpoints but none is complete:\n  "
            + "\n  ".join(problems)
            + f"\nRerun with --overwrite to start afresh (this deletes {ckdir})."
        )
    return None


def save_checkpoint(
    ckdir: Path,
    step: int,
    unet: torch.nn.Module,
    ema: EMA,
    state: dict[str, Any],
    keep_last: int,
    world: int,
) -> Path:
    """Write ``step``'s checkpoint atomically, point ``LATEST`` at it, keep the newest
    ``keep_last``. ``state`` is what :data:`STATE_FILE` holds (it must have ``images_seen``)."""
    name = checkpoint_name(step)
    final = ckdir / name
    with atomic_path(final) as tmp:
        tmp.mkdir()
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        ema.model.save_pretrained(tmp / "unet_ema", safe_serialization=True)
        torch.save(state, tmp / STATE_FILE)
        files = {
            str(p.relative_to(tmp)): {"size": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(tmp.rglob("*"))
            if p.is_file()
        }
        meta = {
            "step": step,
            "images_seen": state["images_seen"],
            "num_processes": world,
            "code_version": code_version(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "files": files,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    atomic_write_text(ckdir / LATEST, name + "\n")
    for old in checkpoint_dirs(ckdir)[keep_last:]:
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, unet, ema: EMA, optimizer, lr_sched) -> dict[str, Any]:
    """Load weights, EMA, optimizer and LR schedule from ``path``; return its training state
    (``step``, ``wall_time``, ``log_accumulator``, and ``objective`` when it has one)."""
    from safetensors.torch import load_file

    def weights(sub: str) -> dict[str, torch.Tensor]:
        return load_file(str(path / sub / "diffusion_pytorch_model.safetensors"))

    try:
        unet.load_state_dict(weights("unet"))
        ema.model.load_state_dict(weights("unet_ema"))
        state = torch.load(path / STATE_FILE, weights_only=True, map_location="cpu")
        optimizer.load_state_dict(state["optimizer"])
        lr_sched.load_state_dict(state["lr_scheduler"])
        ema.load_state_dict(state["ema"])
    except (RuntimeError, KeyError, OSError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint {path} does not match this run ({e}); rerun with --overwrite to start afresh"
        ) from e
    return state


def params_fingerprint(model: torch.nn.Module) -> torch.Tensor:
    """Two float64 sums over all weights (plain and absolute): equal on processes in sync."""
    with torch.no_grad():
        vals = [p.detach().double() for p in model.parameters()]
        return torch.stack([sum(v.sum() for v in vals), sum(v.abs().sum() for v in vals)])
