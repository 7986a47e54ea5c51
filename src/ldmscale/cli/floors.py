"""``ldmscale floors``: the best values a sweep cell's metrics can take (real images and
autoencoder reconstructions), scored like the cells.

    ldmscale floors --config sweep.toml --vae <autoencoder dir> [--n-images N] [--split auto]
                    [--dataset DIR] [--metrics a,b] --out floors.json [--force]

Rerunning reuses ``--out`` unless the protocol, N, images or autoencoder changed.
"""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "floors",
        help="metric floors: real images of the cells' prompts and their autoencoder reconstructions",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, help="the sweep config (TOML or JSON)")
    p.add_argument("--vae", required=True, help="autoencoder folder (AutoencoderKL or SD folder)")
    p.add_argument("--out", required=True, help="floors JSON file (written atomically)")
    p.add_argument("--n-images", type=int, help="images per floor (default: the sweep's N)")
    p.add_argument(
        "--split",
        default="auto",
        help="the real images: 'rerender' (shapes data: fresh renders of the cells' prompts), "
        "the reference split (its own images of the cells' prompts), another split (its images "
        "with their own captions: not paired with the cells' prompts); default auto = rerender "
        "for shapes data, else the reference split",
    )
    p.add_argument("--dataset", help="override the sweep config's dataset")
    p.add_argument("--metrics", help="override the sweep config's metrics, comma-separated")
    p.add_argument("--force", action="store_true", help="recompute even if --out is up to date")
    p.add_argument("--json", action="store_true", help="print the floors as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ldmscale.floors import ensure_floors, format_floors
    from ldmscale.sweep import SweepConfig

    cfg = SweepConfig.load(args.config)
    changes: dict = {}
    if args.dataset:
        changes["dataset"] = args.dataset
    if args.metrics:
        changes["metrics"] = [m.strip() for m in args.metrics.split(",") if m.strip()]
    if changes:
        cfg = SweepConfig.from_dict({**cfg.to_dict(), **changes})
    floors = ensure_floors(
        args.out,
        cfg,
        args.vae,
        n_images=args.n_images,
        split=args.split,
        progress=not args.no_progress,
        force=args.force,
        log=print,
    )
    if args.json:
        print(json.dumps(floors, sort_keys=True))
    else:
        print(format_floors(floors))
        print(f"floors in {args.out}")
    return 0
