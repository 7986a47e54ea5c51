"""``ldmscale metrics``: score a folder of generated images.

ldmscale metrics fid         --images SAMPLES --ref DATA [--split validation] [--kid]
ldmscale metrics fd_effnet   --images SAMPLES --ref DATA
ldmscale metrics fd_probe    --images SAMPLES --ref DATA [--probe PROBE_DIR]
ldmscale metrics alignment   --images SAMPLES (--probe PROBE_DIR | --data DATA) [--captions FILE]
ldmscale metrics clip_score  --images SAMPLES --clip CLIP_DIR [--captions FILE] [--x100]
ldmscale metrics train-probe --data DATA --out PROBE_DIR

Metric names are the results store's (ldmscale.metrics.registry); the older spellings
fd-effnet, fd-probe and clip-score are accepted too.

SAMPLES is a folder written by `ldmscale sample` (its samples.json gives the files and their
prompts) or any folder of equally sized PNG/JPEG images (captions then come from --captions:
a text file with one caption per line, or a JSON list). DATA is a dataset folder
(`ldmscale data shapes`, imagefolder, COCO root). Reference statistics and the probe are
cached (default ~/.cache/ldmscale, or $LDMSCALE_CACHE). See docs/metrics.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from ldmscale.cli import UserError
from ldmscale.metrics.registry import build_network, get_metric

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "metrics",
        help="FID / KID / FD-EffNet / FD-probe / text alignment / CLIP score of generated images",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="metrics_command", metavar="METRIC", required=True)

    def images_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--images", required=True, help="folder of generated images")
        p.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
        p.add_argument("--json", action="store_true", help="print the result as JSON")

    def ref_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--ref", required=True, help="reference dataset folder")
        p.add_argument("--split", default="validation", help="reference split (default validation)")
        p.add_argument(
            "--resolution",
            type=int,
            default=None,
            help="load reference images at this side in px (default: the generated images' side)",
        )
        p.add_argument("--max-ref", type=int, default=None, help="use at most N reference images")
        p.add_argument("--cache-dir", default=None, help="cache folder (default $LDMSCALE_CACHE)")

    def metric_parser(name: str, extra: str = "", aliases: tuple[str, ...] = ()):
        m = get_metric(name)
        return sub.add_parser(name, aliases=list(aliases), help=m.note + extra)

    p = metric_parser("fid", "; --kid adds KID")
    images_arg(p)
    ref_args(p)
    p.add_argument("--kid", action="store_true", help="also report KID (mean ± std)")
    p.set_defaults(func=_fid, metric="fid")

    p = metric_parser("fd_effnet", aliases=("fd-effnet",))
    images_arg(p)
    ref_args(p)
    p.set_defaults(func=_fid, metric="fd_effnet", kid=False)

    p = metric_parser("fd_probe", aliases=("fd-probe",))
    images_arg(p)
    ref_args(p)
    p.add_argument("--probe", default=None, help="probe folder (default: cached probe of --ref)")
    p.set_defaults(func=_fid, metric="fd_probe", kid=False)

    p = metric_parser("alignment")
    images_arg(p)
    p.add_argument("--probe", default=None, help="probe folder")
    p.add_argument("--data", default=None, help="shapes dataset (uses its cached probe)")
    p.add_argument("--captions", default=None, help="captions file (default: samples.json)")
    p.add_argument("--cache-dir", default=None, help="cache folder (default $LDMSCALE_CACHE)")
    p.set_defaults(func=_alignment)

    p = metric_parser("clip_score", aliases=("clip-score",))
    images_arg(p)
    p.add_argument("--clip", default=None, help="local CLIP folder (CLIPModel + processor)")
    p.add_argument("--captions", default=None, help="captions file (default: samples.json)")
    p.add_argument("--x100", action="store_true", help="report 100 × cosine")
    p.set_defaults(func=_clip_score)

    p = sub.add_parser("train-probe", help="train the shapes probe and report its accuracy")
    p.add_argument("--data", required=True, help="shapes dataset folder (train + validation)")
    p.add_argument("--out", required=True, help="folder to write the probe to")
    p.add_argument("--steps", type=int, default=None, help="training steps (default 600)")
    p.add_argument("--max-train", type=int, default=None, help="use at most N train images")
    p.add_argument("--resolution", type=int, default=None, help="probe input side (default: data)")
    p.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    p.set_defaults(func=_train_probe)


def read_image_folder(folder: str | Path) -> tuple[np.ndarray, list[str] | None]:
    """uint8 images ``[N, H, W, 3]`` of a folder, and its prompts when samples.json lists them."""
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder of images")
    samples = folder / "samples.json"
    prompts = None
    if samples.is_file():
        entries = json.loads(samples.read_text()).get("images", [])
        files = [folder / e["file"] for e in entries]
        prompts = [e.get("prompt", "") for e in entries]
    else:
        files = sorted(
            f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.stem != "grid"
        )
    if not files:
        raise UserError(f"no images in {folder} (looked for {', '.join(IMAGE_SUFFIXES)})")
    arrays = []
    for f in files:
        try:
            with Image.open(f) as im:
                arrays.append(np.asarray(im.convert("RGB"), np.uint8))
        except OSError as e:
            raise UserError(f"{f}: cannot read image ({e})") from e
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise UserError(
            f"{folder}: images have different sizes {sorted(shapes)}; resize them first"
        )
    return np.stack(arrays), prompts


def _captions(args: argparse.Namespace, prompts: list[str] | None, n: int) -> list[str]:
    if args.captions:
        path = Path(args.captions)
        if not path.is_file():
            raise UserError(f"captions file {path} not found")
        text = path.read_text()
        caps = json.loads(text) if path.suffix == ".json" else text.splitlines()
    elif prompts is not None:
        caps = prompts
    else:
        raise UserError("no captions: the folder has no samples.json; pass --captions FILE")
    if len(caps) != n:
        raise UserError(f"{n} images but {len(caps)} captions; give one caption per image")
    return [str(c) for c in caps]


def _print(args: argparse.Namespace, result: dict[str, Any], text: str) -> None:
    print(json.dumps(result, indent=2) if args.json else text)


def _fid(args: argparse.Namespace) -> int:
    from ldmscale.metrics.common import extract_features
    from ldmscale.metrics.fid import warn_few_images
    from ldmscale.metrics.frechet import frechet_distance_features
    from ldmscale.metrics.reference import reference_stats

    metric = get_metric(args.metric)
    images, _ = read_image_folder(args.images)
    extractor = build_network(
        metric.network,
        dataset=args.ref,
        probe_dir=getattr(args, "probe", None),
        cache_dir=args.cache_dir,
    )
    ref = reference_stats(
        args.ref,
        extractor,
        split=args.split,
        resolution=args.resolution or images.shape[1],
        max_images=args.max_ref,
        cache_dir=args.cache_dir,
        keep_features=args.kid,
    )
    feats = extract_features(images, extractor, args.batch_size, progress=True)
    label = metric.label
    warn_few_images(len(feats), "generated", label)
    warn_few_images(ref.stats.n, "reference", label)
    value = frechet_distance_features(feats, ref.stats)
    result: dict[str, Any] = {
        "metric": label,
        "value": value,
        "n_images": len(feats),
        "n_reference": ref.stats.n,
        "features": extractor.fingerprint(),
    }
    text = f"{label} = {value:.4f}  ({len(feats)} images vs {ref.stats.n} reference)"
    if args.kid:
        from ldmscale.metrics.kid import kid

        k = kid(feats, ref.features)
        result["kid"] = {"mean": k.mean, "std": k.std, "subset_size": k.subset_size}
        text += f"\nKID = {k.mean:.6f} ± {k.std:.6f}  (subsets of {k.subset_size})"
    _print(args, result, text)
    return 0


def _alignment(args: argparse.Namespace) -> int:
    from ldmscale.metrics.alignment import text_alignment

    if (args.probe is None) == (args.data is None):
        raise UserError("give exactly one of --probe PROBE_DIR or --data SHAPES_DATASET")
    images, prompts = read_image_folder(args.images)
    captions = _captions(args, prompts, len(images))
    probe = build_network(
        "probe", dataset=args.data, probe_dir=args.probe, cache_dir=args.cache_dir
    )
    res = text_alignment(images, probe, captions=captions, batch_size=args.batch_size)
    result = {"metric": "alignment", "value": res.score, "n_images": len(images)}
    _print(
        args,
        result,
        f"text alignment = {res.score:.4f}  ({int(res.hits.sum())}/{len(images)} images)",
    )
    return 0


def _clip_score(args: argparse.Namespace) -> int:
    from ldmscale.metrics.clip_score import clip_score

    images, prompts = read_image_folder(args.images)
    captions = _captions(args, prompts, len(images))
    res = clip_score(
        images, captions, args.clip, args.batch_size, scale=100.0 if args.x100 else 1.0
    )
    result = {
        "metric": "clip_score",
        "value": res.mean,
        "scale": res.scale,
        "n_images": len(images),
    }
    _print(args, result, f"CLIP score = {res.mean:.4f}  (x{res.scale:g}, {len(images)} images)")
    return 0


def _train_probe(args: argparse.Namespace) -> int:
    from ldmscale.metrics.probe import ProbeConfig, train_probe

    cfg = ProbeConfig(resolution=args.resolution, max_train=args.max_train, seed=args.seed)
    if args.steps is not None:
        cfg = cfg.replace(steps=args.steps)
    probe = train_probe(args.data, args.out, cfg)
    acc = probe.info["validation"]
    print(
        f"probe in {args.out}: held-out accuracy on {probe.info['n_validation']} images: "
        f"attributes {acc['attribute_accuracy']:.4f}, objects {acc['object_accuracy']:.4f}, "
        f"whole images {acc['image_accuracy']:.4f} (trained {probe.info['train_seconds']} s)"
    )
    return 0
