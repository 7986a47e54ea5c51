"""``ldmscale autoencoder train|eval``: the stage-one autoencoder from the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

OVERRIDES = (
    # (flag, AutoencoderConfig field, type)
    ("--steps", "steps", int),
    ("--batch-size", "batch_size", int),
    ("--lr", "lr", float),
    ("--kl-weight", "kl_weight", float),
    ("--seed", "seed", int),
    ("--resolution", "resolution", int),
    ("--latent-channels", "latent_channels", int),
    ("--layers-per-block", "layers_per_block", int),
    ("--norm-num-groups", "norm_num_groups", int),
    ("--loss", "loss", str),
    ("--val-images", "val_images", int),
)


def _widths(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(w) for w in text.split(","))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "autoencoder",
        help="train or evaluate the stage-one autoencoder (AutoencoderKL)",
        description="Train a small KL autoencoder on a dataset, or measure a VAE's reconstruction PSNR.",
    )
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    t = sub.add_parser("train", help="train an AutoencoderKL and save it (diffusers format)")
    t.add_argument("--data", required=True, help="dataset folder (imagefolder / shapes / COCO)")
    t.add_argument("--out", required=True, help="output folder (written atomically)")
    t.add_argument("--config", help="AutoencoderConfig as JSON or TOML; flags override it")
    for flag, field, tp in OVERRIDES:
        t.add_argument(flag, dest=field, type=tp, default=None, help=f"AutoencoderConfig.{field}")
    t.add_argument("--block-out-channels", dest="block_out_channels", type=_widths, default=None,
                   help="widths, e.g. 32,64,64 (3 blocks = 4x downsampling)")  # fmt: skip
    t.add_argument(
        "--overwrite", action="store_true", help="replace an earlier autoencoder in --out"
    )
    t.add_argument("--no-progress", action="store_true", help="hide progress bars")
    t.add_argument("--debug", action="store_true", help="show tracebacks")
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="reconstruction PSNR of a VAE on a dataset split")
    e.add_argument("--vae", required=True, help="AutoencoderKL folder (or SD pipeline folder)")
    e.add_argument("--data", required=True, help="dataset folder")
    e.add_argument("--split", default="validation", help="split to evaluate (default validation)")
    e.add_argument("--resolution", type=int, default=None,
                   help="image size (default: the VAE's sample_size)")  # fmt: skip
    e.add_argument("--max-images", type=int, default=512, help="images to use (default 512)")
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.add_argument("--debug", action="store_true", help="show tracebacks")
    e.set_defaults(func=_eval)


def _train(args: argparse.Namespace) -> int:
    from ldmscale.autoencoder import AutoencoderConfig, read_training_record, train_autoencoder
    from ldmscale.data import load_dataset

    cfg = AutoencoderConfig.load(args.config) if args.config else AutoencoderConfig()
    changes = {f: getattr(args, f) for _, f, _ in OVERRIDES if getattr(args, f) is not None}
    if args.block_out_channels is not None:
        changes["block_out_channels"] = args.block_out_channels
    cfg = AutoencoderConfig.from_dict({**cfg.to_dict(), **changes})
    progress = not args.no_progress
    train_ds = load_dataset(args.data, split="train", resolution=cfg.resolution)
    try:
        val_ds = load_dataset(args.data, split="validation", resolution=cfg.resolution)
    except (ValueError, FileNotFoundError) as e:
        val_ds = None
        print(f"no usable validation split ({e}): PSNR is not measured")
    out = train_autoencoder(
        train_ds, val_ds, cfg, Path(args.out), progress=progress, overwrite=args.overwrite
    )
    rec = read_training_record(out)
    assert rec is not None
    psnr = rec["val_psnr_db"]
    print(
        f"saved {out}  latent {'x'.join(map(str, rec['latent_shape']))}  "
        f"scaling_factor {rec['scaling_factor']:.5f}  "
        + (f"val PSNR {psnr:.2f} dB ({rec['val_images']} images)" if psnr is not None else "")
        + f"  {rec['seconds']:.0f} s"
    )
    return 0


def _eval(args: argparse.Namespace) -> int:
    from ldmscale.autoencoder import load_autoencoder, reconstruction_psnr
    from ldmscale.data import load_dataset

    vae = load_autoencoder(args.vae)
    resolution = args.resolution or int(vae.config.sample_size)
    ds = load_dataset(args.data, split=args.split, resolution=resolution)
    n = min(args.max_images, len(ds))
    value = reconstruction_psnr(vae, ds, max_images=n, progress=True)
    result = {
        "vae": str(args.vae),
        "split": args.split,
        "resolution": resolution,
        "images": n,
        "psnr_db": value,
        "scaling_factor": float(vae.config.scaling_factor),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"PSNR {value:.2f} dB on {n} {args.split} images at {resolution} px  "
            f"(scaling_factor {result['scaling_factor']:.5f})"
        )
    return 0
