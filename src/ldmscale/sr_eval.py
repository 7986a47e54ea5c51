"""Evaluate super-resolution models: LR input sets, per-image scores, baselines, sweep cells.

- An :class:`LRSet` is what an SR model upscales: uint8 LR images ``[N, h, w, 3]``, and when
  known their HR ground truth ``[N, H, W, 3]`` and shapes ``attributes``. Made from a
  dataset split (:func:`lr_set_from_dataset`: its first ``n`` images, image ``i`` degraded with
  ``torch.Generator().manual_seed(seed0 + i)``, so the set is fixed) or a folder of LR images
  (:func:`lr_set_from_folder`, no ground truth).
- :func:`sr_metric_rows`: per-image rows of a protocol's metrics on SR outputs: PSNR, SSIM,
  probe accuracies against the ground truth (:mod:`ldmscale.metrics.sr`) and feature rows for
  the Fréchet distances against the HR references (the protocol's dataset split).
- :func:`baseline_images`: bicubic upsampling of the LR, and the autoencoder's reconstruction
  of the ground truth (the ceiling a latent SR model cannot pass).
- :func:`sr_context` + :func:`evaluate_sr_cell`: SR sweep cells (model x sampler x steps,
  guidance 1) for :func:`ldmscale.sweep.run_cells`, so they land in the one results store with
  per-image rows in the row cache (paired bootstrap, :mod:`ldmscale.paired`). A cell's
  prompts are empty captions, its seeds the sampling seeds (image ``i``: seed ``seed0 + i``);
  the LR set is named by ``protocol["sr"]`` (dataset, split, HR size, degradation, LR seed0),
  which is part of every cell id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ldmscale.data.dataset import DataError
from ldmscale.data.degrade import DegradeConfig, degrade, upsample_bicubic
from ldmscale.metrics.registry import check_metrics
from ldmscale.sweep.plan import Cell, CellResult, SweepContext

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class LRSet:
    """LR images ``lr`` uint8 ``[N, h, w, 3]``; ``hr`` uint8 ``[N, H, W, 3]`` and
    ``attributes`` (one record per image) when known; ``info`` says where they came from."""

    lr: np.ndarray
    hr: np.ndarray | None = None
    attributes: list[Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.lr)


def check_hr_size(source: str | Path, split: str, hr_size: int) -> None:
    """Refuse a dataset whose images are smaller than ``hr_size`` (loading would upsample them,
    and an upsampled HR is no ground truth)."""
    from PIL import Image

    from ldmscale.data.folder import canonical_split, list_entries
    from ldmscale.metrics.probe import _dataset_info

    res = _dataset_info(source).get("resolution")
    if res is not None:
        if int(res) < hr_size:
            raise DataError(
                f"{source} holds {res} px images but the SR target is {hr_size} px: HR images "
                f"must be at least the target size; use a dataset rendered at >= {hr_size} px "
                "or an SR model for smaller images"
            )
        return

    def fail(key: str, message: str) -> None:
        raise DataError(message)

    for e in list_entries(source, canonical_split(split), fail)[1]:
        with Image.open(e.path) as im:
            if min(im.size) < hr_size:
                raise DataError(
                    f"{e.path} is {im.size[0]}x{im.size[1]} px, smaller than the SR target "
                    f"{hr_size} px: HR images must be at least the target size; remove it or "
                    "lower the target"
                )


def lr_set_from_dataset(
    source: str | Path,
    n: int,
    hr_size: int,
    degradation: DegradeConfig,
    split: str = "validation",
    seed0: int = 0,
) -> LRSet:
    """The first ``n`` images of ``split`` at ``hr_size`` px, image ``i`` degraded with seed
    ``seed0 + i``."""
    from ldmscale.data import load_dataset

    check_hr_size(source, split, hr_size)
    ds = load_dataset(source, split=split, resolution=hr_size, validate=False)
    if n > len(ds):
        raise DataError(f"{source} ({split}) has {len(ds)} images; asked for {n}")
    hr = ds.images_uint8(list(range(n)))
    gens = [torch.Generator().manual_seed(seed0 + i) for i in range(n)]
    lr = degrade(torch.from_numpy(hr), degradation, gens, hr_size=hr_size).numpy()
    attrs = list(ds.attributes[:n])
    info = {
        "dataset": str(source),
        "split": split,
        "hr_size": hr_size,
        "fingerprint": ds.fingerprint(),
        "degradation": degradation.to_dict(),
        "seed0": seed0,
        "n": n,
    }
    return LRSet(lr, hr, attrs if all(a is not None for a in attrs) else None, info)


def lr_set_from_folder(folder: str | Path) -> LRSet:
    """LR images from a folder of image files (sorted by name), all of one size, no ground
    truth."""
    from PIL import Image

    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise DataError(f"{folder} holds no images ({', '.join(IMAGE_EXTS)})")
    images = [np.asarray(Image.open(p).convert("RGB")) for p in files]
    sizes = {im.shape for im in images}
    if len(sizes) != 1:
        raise DataError(f"LR images in {folder} differ in size ({sorted(sizes)}); use one size")
    return LRSet(np.stack(images), info={"folder": str(folder), "n": len(files)})


def sr_metric_rows(
    images: np.ndarray, lrset: LRSet, protocol: dict[str, Any], lo: int = 0
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Per-image rows of the protocol's metrics on SR outputs ``images`` (uint8, HR size) of
    LR images ``lo .. lo + len(images)`` of ``lrset``, and each network's fingerprint."""
    from ldmscale.metrics import sr as srm
    from ldmscale.metrics.common import MetricsError, extract_features
    from ldmscale.metrics.protocol import protocol_probe, reference_set

    hi = lo + len(images)
    rows: dict[str, np.ndarray] = {}
    prints: dict[str, str] = {}
    hits = None
    for metric in check_metrics(protocol["metrics"]):
        name = metric.name
        if metric.kind == "feature_distance":
            extractor, _ = reference_set(name, protocol)
            prints[name] = extractor.fingerprint()
            rows[name] = extract_features(images, extractor)
            continue
        if "ground_truth" not in metric.needs or lrset.hr is None:
            raise MetricsError(
                f"metric {name!r} cannot score SR outputs"
                + (" without ground truth (an LR folder)" if lrset.hr is not None else "")
                + "; SR metrics: psnr, ssim, attr_acc, object_acc and the Frechet distances"
            )
        if name in ("psnr", "ssim"):
            rows[name] = getattr(srm, name)(images, lrset.hr[lo:hi])
            prints[name] = "pixels"
            continue
        if lrset.attributes is None:
            raise MetricsError(f"metric {name!r} needs shapes attributes; the LR set has none")
        probe = protocol_probe(protocol)
        if hits is None:
            hits = srm.attribute_hits(images, lrset.attributes[lo:hi], probe)
        rows[name] = hits[name]
        prints[name] = probe.fingerprint()
    return rows, prints


def autoencode(vae: Any, hr: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """The autoencoder's reconstruction (posterior mean, decoded) of uint8 ``hr``: the ceiling."""
    out = []
    for i in range(0, len(hr), batch_size):
        x = torch.from_numpy(hr[i : i + batch_size]).permute(0, 3, 1, 2).float() / 127.5 - 1
        with torch.inference_mode():
            z = vae.encode(x.to(vae.device, vae.dtype)).latent_dist.mode()
            y = vae.decode(z, return_dict=False)[0]
        y = ((y.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        out.append(y.permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(out)


def baseline_images(lrset: LRSet, scale: int, vae: Any | None = None) -> dict[str, np.ndarray]:
    """``{"bicubic": ..., "autoencoder": ...}`` uint8 HR-size images (the autoencoder's only with
    a ``vae`` and ground truth)."""
    out = {"bicubic": upsample_bicubic(torch.from_numpy(lrset.lr), scale).numpy()}
    if vae is not None and lrset.hr is not None:
        out["autoencoder"] = autoencode(vae, lrset.hr)
    return out


# ----------------------------------------------------------------------------- sweep cells


def sr_protocol(
    lrset: LRSet,
    metrics: tuple[str, ...],
    bootstrap: int = 200,
    ci_level: float = 0.95,
    probe_steps: int = 600,
    noise_level: int | None = None,
) -> dict[str, Any]:
    """The metric protocol of SR cells on ``lrset`` (a dataset LR set): the reference is its
    dataset split at the HR size, ``"sr"`` names the LR set and the sampling noise level."""
    if lrset.hr is None:
        raise DataError("SR sweep cells need an LR set with ground truth (lr_set_from_dataset)")
    info = lrset.info
    return {
        "metrics": sorted(metrics),
        "bootstrap": bootstrap,
        "ci_level": ci_level,
        "reference": {
            "dataset": info["dataset"],
            "split": info["split"],
            "resolution": info["hr_size"],
            "fingerprint": info["fingerprint"],
        },
        "prompts": {"source": "sr", "text": ""},
        "probe": {"steps": probe_steps},
        "clip_model": None,
        "sr": {k: info[k] for k in ("degradation", "seed0", "n")} | {"noise_level": noise_level},
    }


def sr_context(
    models: list[str | Path],
    lrset: LRSet,
    metrics: tuple[str, ...],
    seed0: int = 0,
    batch_size: int = 16,
    rows_dir: str | Path | None = None,
    **protocol: Any,
) -> SweepContext:
    """The shared inputs of SR cells: the models, ``len(lrset)`` empty prompts, sampling seeds
    ``seed0 ..``, :func:`sr_protocol`. Plan cells with ``ctx.cell(model, sampler, steps, 1.0,
    n)`` (``ldmscale.sweep.plan``)."""
    from ldmscale.sweep.models import describe_model

    n = len(lrset)
    _LRSETS[_lr_key(sr_protocol(lrset, metrics, **protocol))] = lrset
    return SweepContext(
        [describe_model(m) for m in models],
        ("",) * n,
        tuple(range(seed0, seed0 + n)),
        sr_protocol(lrset, metrics, **protocol),
        batch_size,
        None if rows_dir is None else str(rows_dir),
    )


_LRSETS: dict[str, LRSet] = {}


def _lr_key(protocol: dict[str, Any]) -> str:
    from ldmscale.io import hash_json

    return hash_json([protocol["reference"], {**protocol["sr"], "noise_level": None}])


def protocol_lr_set(protocol: dict[str, Any]) -> LRSet:
    """The LR set a protocol names (rebuilt from its dataset and degradation; cached)."""
    key = _lr_key(protocol)
    if key not in _LRSETS:
        ref, sr = protocol["reference"], protocol["sr"]
        _LRSETS[key] = lr_set_from_dataset(
            ref["dataset"],
            int(sr["n"]),
            int(ref["resolution"]),
            DegradeConfig.from_dict(sr["degradation"]),
            split=ref["split"],
            seed0=int(sr["seed0"]),
        )
    return _LRSETS[key]


def evaluate_sr_cell(cell: Cell) -> CellResult:
    """An SR cell evaluator (``Cell -> CellResult``): upscale the first ``cell.n_images`` LR
    images of the protocol's LR set with the cell's sampler (guidance 1), score them with
    :func:`sr_metric_rows` and attach bootstrap CIs; with ``cell.rows_dir`` the per-image rows
    go to (and are reused from) the row cache, as :func:`ldmscale.sweep.evaluate.evaluate_cell`."""
    from ldmscale.sampling import SamplerConfig
    from ldmscale.sweep.evaluate import evaluate_with_row_cache
    from ldmscale.upscale import upscale

    cfg = SamplerConfig(cell.sampler, cell.steps, cell.guidance, cell.timestep_spacing)

    def sample(model: Any, m: int) -> tuple[dict[str, np.ndarray], dict[str, Any], Any]:
        lrset = protocol_lr_set(cell.protocol)
        level = cell.protocol["sr"].get("noise_level")
        out = upscale(
            model, lrset.lr[m : cell.n_images], list(cell.seeds[m:]), cfg, level,
            batch_size=cell.batch_size, progress=False,
        )  # fmt: skip
        return (*sr_metric_rows(out.images, lrset, cell.protocol, lo=m), out)

    return evaluate_with_row_cache(cell, sample, {"task": "sr"})


def prepare_sr(protocol: dict[str, Any], progress: bool = False) -> None:
    """The ``prepare`` hook of :func:`evaluate_sr_cell`: build the probe and the HR reference
    statistics once in the driver (the ground-truth metrics need nothing built)."""
    from ldmscale.metrics.protocol import protocol_probe, reference_set

    for metric in check_metrics(protocol["metrics"]):
        if metric.kind == "feature_distance":
            reference_set(metric.name, protocol, progress=progress)
        elif metric.network == "probe":
            protocol_probe(protocol)


def is_sr_model(folder: str | Path) -> bool:
    """Whether ``folder`` is an ldmscale super-resolution model (``task = "sr"``)."""
    from ldmscale.modelfolder import MODEL_FILE, read_model_meta

    return (Path(folder) / MODEL_FILE).is_file() and read_model_meta(folder).task == "sr"


def plan_sr_sweep(cfg: Any) -> Any:
    """The SR cells of a :class:`~ldmscale.sweep.SweepConfig` whose models are all SR models:
    every model x sampler x steps x spacing at guidance 1 (no CFG), on the LR set of the first
    ``n_images`` images of ``cfg.dataset``'s validation split at ``cfg.resolution`` px, image
    ``i`` degraded with seed ``i`` by the models' training degradation (they must share it).
    Run it with ``run_sweep(cfg, evaluate=evaluate_sr_cell, plan=plan, prepare=prepare_sr)``."""
    from ldmscale.config import ConfigError
    from ldmscale.io import hash_json
    from ldmscale.modelfolder import read_model_meta
    from ldmscale.sweep.plan import Plan

    if set(cfg.guidance) != {1.0}:
        raise ConfigError(
            f"SR models sample without CFG: set guidance = [1] (got {list(cfg.guidance)})"
        )
    if not cfg.dataset or not cfg.resolution:
        raise ConfigError("an SR sweep needs `dataset` and `resolution` (the HR ground truth)")
    metas = [read_model_meta(m) for m in cfg.models]
    degradations = {hash_json(meta.sr.degradation) for meta in metas}
    if len(degradations) != 1:
        raise ConfigError(
            "the SR models were trained on different degradations; sweep them separately"
        )
    deg = DegradeConfig.from_dict(metas[0].sr.degradation)
    lrset = lr_set_from_dataset(cfg.dataset, cfg.n_images, cfg.resolution, deg)
    ctx = sr_context(
        list(cfg.models),
        lrset,
        tuple(cfg.metrics),
        seed0=cfg.seed0,
        batch_size=cfg.batch_size,
        rows_dir=cfg.rows_dir,
        bootstrap=cfg.bootstrap,
        ci_level=cfg.ci_level,
        probe_steps=cfg.probe_steps,
    )
    cells = [
        ctx.cell(model, sampler, steps, 1.0, cfg.n_images, spacing)
        for model in ctx.models
        for sampler in cfg.samplers
        for steps in cfg.steps
        for spacing in cfg.timestep_spacings
    ]
    return Plan(cells, [], ctx)
