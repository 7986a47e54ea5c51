"""Floors: the best value a sweep cell's metric can take in this pipeline.

Two floors per metric, both scored exactly like a sweep cell (the sweep's metric protocol and
reference, the same number of images N, the same bootstrap CIs with the cells' seed):

- ``real``: N real images that a perfect generator could have drawn for the cells' prompts.
  Which images (``split``, default ``"auto"``):

  - ``"rerender"`` (auto for the shapes dataset): for each of the cells' N prompts (the first
    N reference captions), a fresh image of the same objects placed anew by the generator
    (:func:`ldmscale.data.shapes.rerender`): an exact draw from p(image | caption), unseen by
    the probe and disjoint from the reference. The floor a perfect generator gets.
  - the reference split's name (auto for other data): the reference's own first N images,
    i.e. the images of the cells' prompts. They are part of the reference, so this floor is
    somewhat optimistic (lower Fréchet distances than an independent draw).
  - another split (e.g. ``"train"``): its first N images with their **own** captions. Not
    paired with the cells' prompts, so on data with few, discrete attributes it is far too
    pessimistic (the trend study's shapes data: FD-probe 192 against 72-74 for re-renders of
    the cells' prompts, at N = 256 of a 512-image reference).

  Fréchet distances are biased upwards at small N, so no floor is 0.
- ``reconstruction``: the same N images encoded with the autoencoder's posterior mean,
  decoded, clamped to [-1, 1] and rounded to uint8 as the sampler does. No diffusion model in
  that latent space can draw better than its decoder, so this bounds every cell from below
  (above, for higher-is-better metrics such as ``alignment``).

Files: ``floors.json`` = ``{"<metric>": {"real": {"value","lo","hi","n"}, "reconstruction":
{...}}, "meta": {...}}``, written atomically. :func:`ensure_floors` recomputes only when what
the floors depend on (protocol hash, N, the floor images and their content, autoencoder
weights) changed.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ldmscale.io import atomic_write_json, hash_json
from ldmscale.provenance import code_version

if TYPE_CHECKING:
    from ldmscale.sweep import SweepConfig

FLOORS_FORMAT = "ldmscale-floors/1"
KINDS = ("real", "reconstruction")
#: ``split`` values that are not a split name (see the module docstring).
AUTO, RERENDER = "auto", "rerender"
#: Bumped when :func:`ldmscale.data.shapes.rerender` or its seeding changes (stale floors).
RERENDER_VERSION = "rerender/1"
#: Meta fields whose change makes stored floors stale (see :func:`floors_key`).
KEY_FIELDS = ("protocol_hash", "n", "split", "images_fingerprint", "vae_hash")


class FloorsError(ValueError):
    """Floors that cannot be computed or read as asked; the message says how to fix it."""


# --------------------------------------------------------------------------------------
# The pieces: reconstruction and scoring
# --------------------------------------------------------------------------------------


def reconstruct(vae: Any, images: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, float]:
    """Autoencoder reconstructions of uint8 images ``[N, H, W, 3]``.

    Each image goes to [-1, 1], is encoded to its posterior mean (``latent_dist.mode()``, no
    sampling, no scaling factor: encode then decode cancels it), decoded, clamped to [-1, 1]
    and rounded to uint8 like the sampler's ``decode_latents``. Returns ``(reconstructions
    uint8 [N, H, W, 3], mean per-image PSNR in dB)``; the PSNR compares the clamped decoder
    output (before rounding) with the input in [0, 1], as ``ldmscale autoencoder eval`` does.
    """
    import torch

    from ldmscale.autoencoder import psnr

    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise FloorsError(
            f"reconstruct: expected uint8 images [N, H, W, 3], got {images.dtype} {images.shape}"
        )
    if batch_size < 1:
        raise FloorsError(f"reconstruct: batch_size must be >= 1, got {batch_size}")
    out = np.empty_like(images)
    total = 0.0
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(images[i : i + batch_size]).permute(0, 3, 1, 2).float()
            x = x / 127.5 - 1.0
            z = vae.encode(x).latent_dist.mode()
            x_hat = vae.decode(z).sample.float().clamp(-1, 1)
            x01, y01 = (x_hat + 1) / 2, (x + 1) / 2
            total += float(psnr(x01, y01).sum())
            out[i : i + len(x)] = (
                (x01.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).cpu().numpy()
            )
    return out, total / max(1, len(images))


def score_images(
    images: np.ndarray, captions: list[str], protocol: dict[str, Any], seed: int = 0
) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """Score uint8 images as a sweep cell is scored: ``(metrics, feature_networks)``.

    ``metrics`` = ``{name: {"value", "lo", "hi", "n"}}`` from the sweep's ``metric_rows`` and
    ``score_rows`` (bootstrap CI over the images, reference held fixed); ``seed`` is the
    bootstrap seed (a cell uses its first image seed, the sweep's ``seed0``).
    """
    from ldmscale.sweep import metric_rows, score_rows

    if len(images) != len(captions):
        raise FloorsError(f"{len(images)} images but {len(captions)} captions; give one each")
    rows, fingerprints = metric_rows(images, list(captions), protocol)
    return score_rows(rows, protocol, seed=seed), fingerprints


# --------------------------------------------------------------------------------------
# What the floors depend on
# --------------------------------------------------------------------------------------


def _check_vae_dir(vae_dir: str | Path, dataset: str | None) -> Path:
    path = Path(vae_dir).expanduser()
    if not path.is_dir():
        data = dataset or "<dataset>"
        raise FloorsError(
            f"autoencoder folder not found: {path}; train one with `ldmscale autoencoder train "
            f"--data {data} --out {path}` (or pass a study's <out_dir>/autoencoder folder, or a "
            "diffusers AutoencoderKL / Stable Diffusion folder)"
        )
    return path


def _floor_images(
    sweep_cfg: SweepConfig, n: int, split: str, progress: bool
) -> tuple[str, Any, str]:
    """``(mode, dataset, fingerprint)`` of the real floor images: ``mode`` is ``"rerender"``,
    the reference split or another split (``split="auto"`` resolved, see the module doc)."""
    from ldmscale.data import load_dataset
    from ldmscale.data.folder import canonical_split

    ref_split = canonical_split(sweep_cfg.split)
    ref = load_dataset(
        sweep_cfg.dataset, split=ref_split, resolution=sweep_cfg.resolution, progress=progress
    )
    shapes = bool(ref.attributes) and all(
        isinstance(a, dict) and a.get("objects") for a in ref.attributes
    )
    mode = split if split in (AUTO, RERENDER) else canonical_split(split)
    if mode == AUTO:
        mode = RERENDER if shapes else ref_split
    if mode == RERENDER and not shapes:
        raise FloorsError(
            f"split='rerender' needs the shapes dataset (objects in every example's attributes); "
            f"{sweep_cfg.dataset} has none. Use split='auto' (the reference's own images)"
        )
    if mode in (RERENDER, ref_split):
        ds, fingerprint = ref, ref.fingerprint()
        if mode == RERENDER:
            fingerprint = hash_json([fingerprint, RERENDER_VERSION, int(sweep_cfg.seed0)], 16)
        if mode != RERENDER and len(ref.captions) < n:  # fresh renders never repeat
            raise FloorsError(
                f"the cells' {n} prompts cycle over only {len(ref.captions)} {ref_split} "
                "captions; a floor would repeat images (biasing the Fréchet distances): lower "
                f"--n-images to {len(ref.captions)} or use a larger {ref_split} split"
            )
    else:
        ds = load_dataset(
            sweep_cfg.dataset, split=mode, resolution=sweep_cfg.resolution, progress=progress
        )
        fingerprint = ds.fingerprint()
    if mode != RERENDER and len(ds) < n:
        raise FloorsError(
            f"the {mode} split of {sweep_cfg.dataset} has {len(ds)} images, fewer than the "
            f"N={n} of the cells; generate a larger dataset or lower --n-images (repeating "
            "images would bias the Fréchet distances)"
        )
    return mode, ds, fingerprint


def _resolve(
    sweep_cfg: SweepConfig,
    vae_dir: str | Path,
    n_images: int | None,
    split: str,
    progress: bool = False,
) -> dict[str, Any]:
    """Everything the floors depend on: protocol, N, the floor images' split and the VAE."""
    from ldmscale.autoencoder import load_autoencoder, vae_fingerprint
    from ldmscale.sweep import load_prompts, metric_protocol

    if not sweep_cfg.dataset:
        raise FloorsError(
            "floors need a dataset: set `dataset` in the sweep config (its validation split is "
            "the reference and gives the prompts whose real images are the floor)"
        )
    path = _check_vae_dir(vae_dir, sweep_cfg.dataset)
    n = int(sweep_cfg.n_images if n_images is None else n_images)
    if n < 2:
        raise FloorsError(f"floors need at least 2 images (for a CI), got n_images={n}")
    _, source = load_prompts(sweep_cfg)
    protocol = metric_protocol(sweep_cfg, source)
    mode, ds, fingerprint = _floor_images(sweep_cfg, n, split, progress)
    vae = load_autoencoder(path)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if sweep_cfg.resolution % factor:
        raise FloorsError(
            f"the autoencoder downsamples by {factor}, which does not divide the sweep's "
            f"resolution {sweep_cfg.resolution}"
        )
    return {
        "protocol": protocol,
        "n": n,
        "split": mode,
        "dataset": ds,
        "vae": vae,
        "vae_path": str(path.resolve()),
        "key": {
            "protocol_hash": hash_json(protocol, length=24),
            "n": n,
            "split": mode,
            "images_fingerprint": fingerprint,
            "vae_hash": vae_fingerprint(vae),
        },
    }


def floors_key(
    sweep_cfg: SweepConfig, vae_dir: str | Path, n_images: int | None = None, split: str = AUTO
) -> dict[str, Any]:
    """The meta fields (:data:`KEY_FIELDS`) that stored floors must match to be reused:
    the metric protocol's hash (as in the cells' ids), N, the floor split and its content
    fingerprint, and the autoencoder's weight hash. Code version is not part of it."""
    return _resolve(sweep_cfg, vae_dir, n_images, split)["key"]


# --------------------------------------------------------------------------------------
# Compute, read, write, resume
# --------------------------------------------------------------------------------------


def compute_floors(
    sweep_cfg: SweepConfig,
    vae_dir: str | Path,
    n_images: int | None = None,
    split: str = AUTO,
    progress: bool = True,
    batch_size: int = 64,
) -> dict[str, Any]:
    """The real-image and reconstruction floors of every metric of ``sweep_cfg`` (a
    :class:`~ldmscale.sweep.SweepConfig`).

    Uses ``n_images`` real images (default: the cells' N) chosen by ``split`` (see the module
    docstring: ``"auto"``, ``"rerender"`` or a split name), the autoencoder in ``vae_dir``,
    and the sweep's protocol and reference.
    Returns ``{"<metric>": {"real": {"value","lo","hi","n"}, "reconstruction": {...}},
    "meta": {"n", "split", "vae", "vae_hash", "psnr_db", "protocol_hash", "code_version",
    ...}}`` (``psnr_db``: mean per-image reconstruction PSNR of the N images).
    """
    from ldmscale.data.folder import canonical_split
    from ldmscale.sweep import prepare_metrics

    t0 = time.perf_counter()
    r = _resolve(sweep_cfg, vae_dir, n_images, split, progress)
    protocol, n, ds = r["protocol"], r["n"], r["dataset"]
    prepare_metrics(protocol, progress)
    if r["split"] == RERENDER:  # the cells' prompts, cycled as the sweep cycles them
        from ldmscale.data.shapes import rerender

        seed = int(sweep_cfg.seed0)
        m = len(ds)
        captions = [ds.captions[i % m] for i in range(n)]
        res = int(sweep_cfg.resolution)
        real = np.stack(
            [np.asarray(rerender(ds.attributes[i % m], res, _rng(seed, i))) for i in range(n)]
        ).astype(np.uint8)
        what = f"fresh renders of the cells' {n} prompts (their objects placed anew)"
    else:
        captions = list(ds.captions[:n])
        real = ds.images_uint8(list(range(n)))
        what = f"first {n} of the {r['split']} split, in file order, with their own captions"
        if r["split"] == canonical_split(sweep_cfg.split):
            what += " (the cells' prompts; these images are part of the reference)"
    recon, psnr_db = reconstruct(r["vae"], real, batch_size)
    seed = int(sweep_cfg.seed0)
    scores = {kind: score_images(imgs, captions, protocol, seed) for kind, imgs in
              (("real", real), ("reconstruction", recon))}  # fmt: skip
    out: dict[str, Any] = {
        name: {kind: scores[kind][0][name] for kind in KINDS} for name in protocol["metrics"]
    }
    out["meta"] = {
        "format": FLOORS_FORMAT,
        **r["key"],
        "dataset": str(sweep_cfg.dataset),
        "reference_split": protocol["reference"]["split"],
        "resolution": int(sweep_cfg.resolution),
        "images": what,
        "vae": r["vae_path"],
        "psnr_db": psnr_db,
        "metrics": list(protocol["metrics"]),
        "bootstrap_seed": seed,
        "protocol": protocol,
        "feature_networks": scores["real"][1],
        "probe_validation": _probe_validation(protocol),
        "code_version": code_version(),
        "wall_s": round(time.perf_counter() - t0, 2),
    }
    return out


def _rng(seed: int, index: int) -> np.random.Generator:
    """The placement generator of re-rendered image ``index`` (independent of the dataset's)."""
    return np.random.default_rng(np.random.SeedSequence([seed, 0x7F100, index]))


def _probe_validation(protocol: dict[str, Any]) -> dict[str, float] | None:
    """The shapes probe's held-out (validation split) accuracies, when a metric uses it."""
    if not {"alignment", "fd_probe"} & set(protocol["metrics"]):
        return None
    from ldmscale.metrics.protocol import protocol_probe

    return (protocol_probe(protocol).info or {}).get("validation")


def _check_floors(floors: Any, where: str) -> dict[str, Any]:
    if not isinstance(floors, dict) or not isinstance(floors.get("meta"), dict):
        raise FloorsError(f"{where}: not a floors object (no 'meta'); recompute the floors")
    missing = [k for k in ("n", "psnr_db", *KEY_FIELDS) if k not in floors["meta"]]
    if missing:
        raise FloorsError(f"{where}: meta lacks {missing}; recompute the floors")
    for name, entry in floors.items():
        if name == "meta":
            continue
        for kind in KINDS:
            v = entry.get(kind) if isinstance(entry, dict) else None
            if not isinstance(v, dict) or any(k not in v for k in ("value", "lo", "hi", "n")):
                raise FloorsError(
                    f"{where}: {name}.{kind} must have value, lo, hi and n; recompute the floors"
                )
    return floors


def write_floors(path: str | Path, floors: dict[str, Any]) -> Path:
    """Write floors (from :func:`compute_floors`) to ``path`` as JSON, atomically."""
    _check_floors(floors, "write_floors")
    return atomic_write_json(path, floors)


def read_floors(path: str | Path) -> dict[str, Any]:
    """Read a floors file written by :func:`write_floors`; a FloorsError if it is missing or
    damaged (the message says how to recompute it)."""
    path = Path(path)
    if not path.is_file():
        raise FloorsError(
            f"floors file not found: {path}; compute it with `ldmscale floors --config "
            f"<sweep.toml> --vae <autoencoder> --out {path}`"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FloorsError(f"{path}: not a readable floors file ({e}); recompute the floors") from e
    return _check_floors(data, str(path))


def stale_reason(stored: dict[str, Any] | None, key: dict[str, Any]) -> str | None:
    """Why ``stored`` floors do not match ``key`` (:func:`floors_key`), or None if they do."""
    if stored is None:
        return "no floors stored"
    meta = stored.get("meta") or {}
    changed = [k for k in KEY_FIELDS if meta.get(k) != key.get(k)]
    return f"changed: {', '.join(changed)}" if changed else None


def ensure_floors(
    path: str | Path,
    sweep_cfg: SweepConfig,
    vae_dir: str | Path,
    n_images: int | None = None,
    split: str = AUTO,
    progress: bool = True,
    force: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The floors in ``path``, recomputed (and rewritten) only when stale.

    Stale means: no file, an unreadable one, or a stored meta whose protocol hash, N, split,
    split content or autoencoder hash differs from now (:func:`stale_reason`); ``force``
    recomputes anyway. ``log(line)`` receives one line saying what happened. Returns the
    floors and sets ``meta["reused"]`` (True when read from ``path``; not stored in the file).
    """
    path = Path(path)
    key = floors_key(sweep_cfg, vae_dir, n_images, split)
    stored: dict[str, Any] | None = None
    reason: str | None = "forced" if force else None
    if path.exists() and not force:
        try:
            stored = read_floors(path)
        except FloorsError as e:
            reason = f"unreadable ({e})"
    if reason is None:
        reason = stale_reason(stored, key)
    if reason is None and stored is not None:
        if log:
            log(f"floors: reusing {path} (protocol, N, images and autoencoder unchanged)")
        return {**stored, "meta": {**stored["meta"], "reused": True}}
    if log:
        log(f"floors: computing ({reason})")
    floors = compute_floors(sweep_cfg, vae_dir, n_images, split, progress)
    write_floors(path, floors)
    return {**floors, "meta": {**floors["meta"], "reused": False}}


# --------------------------------------------------------------------------------------
# Reading them back
# --------------------------------------------------------------------------------------


def floor_values(floors: dict[str, Any], metric: str) -> dict[str, float]:
    """``{"real": value, "reconstruction": value}`` of one metric (for lines on a figure)."""
    if metric not in floors or metric == "meta":
        known = [k for k in floors if k != "meta"]
        raise FloorsError(f"no floors for metric {metric!r}; the floors have {known}")
    return {kind: float(floors[metric][kind]["value"]) for kind in KINDS}


def _fmt(v: dict[str, float]) -> str:
    value, lo, hi = (float(v[k]) for k in ("value", "lo", "hi"))

    def num(x: float) -> str:
        return f"{x:.3f}" if abs(x) < 10 else f"{x:.1f}"

    if not all(math.isfinite(x) for x in (value, lo, hi)):
        return num(value)
    return f"{num(value)} [{num(lo)}, {num(hi)}]"


def format_floors(floors: dict[str, Any]) -> str:
    """A small table: metric, real floor, reconstruction floor (value [CI]), and the PSNR."""
    meta = floors["meta"]
    rows = [("metric", "real", "reconstruction")]
    for name, entry in floors.items():
        if name != "meta":
            rows.append((name, _fmt(entry["real"]), _fmt(entry["reconstruction"])))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [
        f"floors at N={meta['n']} ({meta['split']} images vs the "
        f"{meta.get('reference_split', 'validation')} reference, CI "
        f"{100 * float((meta.get('protocol') or {}).get('ci_level', 0.95)):g} %)"
    ]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.append(
        f"reconstruction PSNR {float(meta['psnr_db']):.2f} dB  (autoencoder {meta['vae']})"
    )
    return "\n".join(lines)
