"""``ldmscale data``: generate the embedded ``shapes`` dataset, or check a dataset folder.

ldmscale data shapes --out data/shapes --n-train 2000 --n-val 500 --resolution 32 --seed 0
ldmscale data subject --out data/subject --n 5
ldmscale data check data/shapes [--resolution 32] [--skip-bad] [--all-captions]
"""

from __future__ import annotations

import argparse
import json
import warnings
from collections import Counter

from ldmscale.data import load_dataset
from ldmscale.data.folder import available_splits
from ldmscale.data.shapes import generate_shapes


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data",
        help="generate the embedded shapes dataset, or check an image-caption folder",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    p = sub.add_parser("shapes", help="write the procedural shapes dataset (no downloads)")
    p.add_argument("--out", required=True, help="dataset folder to create")
    p.add_argument("--n-train", type=int, default=2000, help="training images (default 2000)")
    p.add_argument("--n-val", type=int, default=500, help="validation images (default 500)")
    p.add_argument("--resolution", type=int, default=32, help="image side in pixels (default 32)")
    p.add_argument("--seed", type=int, default=0, help="generation seed (default 0)")
    p.add_argument(
        "--max-objects",
        type=int,
        choices=(1, 2),
        default=2,
        help="objects per image: 2 = one or two (default), 1 = the one-object variant",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing different folder")
    p.set_defaults(func=_shapes)

    s = sub.add_parser("subject", help="write the shapes DreamBooth subject (a ring) folder")
    s.add_argument("--out", required=True, help="subject folder to create")
    s.add_argument("--n", type=int, default=5, help="subject images, 2-8 (default 5)")
    s.add_argument("--resolution", type=int, default=32, help="image side in pixels (default 32)")
    s.add_argument("--seed", type=int, default=0, help="placement seed (default 0)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing different folder")
    s.set_defaults(func=_subject)

    c = sub.add_parser("check", help="validate a dataset folder and print its counts")
    c.add_argument(
        "source", help="imagefolder (metadata.jsonl) or COCO root, or a metadata/caption file"
    )
    c.add_argument("--split", action="append", help="split(s) to check (default: all found)")
    c.add_argument("--resolution", type=int, default=32, help="training resolution (default 32)")
    c.add_argument(
        "--skip-bad", action="store_true", help="skip and count bad entries instead of failing"
    )
    c.add_argument("--all-captions", action="store_true", help="COCO: one record per caption")
    c.add_argument("--json", action="store_true", help="print the summary as JSON")
    c.set_defaults(func=_check)


def _shapes(args: argparse.Namespace) -> int:
    root = generate_shapes(
        args.out,
        n_train=args.n_train,
        n_val=args.n_val,
        resolution=args.resolution,
        seed=args.seed,
        overwrite=args.overwrite,
        max_objects=args.max_objects,
    )
    print(
        f"shapes dataset in {root}: {args.n_train} train + {args.n_val} validation images at "
        f"{args.resolution} px, seed {args.seed}"
    )
    return 0


def _subject(args: argparse.Namespace) -> int:
    from ldmscale.data.subject import write_subject

    root = write_subject(args.out, args.n, args.resolution, args.seed, args.overwrite)
    print(json.dumps({"subject": str(root), "n": args.n}))
    return 0


def _check(args: argparse.Namespace) -> int:
    splits = args.split or available_splits(args.source) or ["train"]
    summary = {}
    for split in splits:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the summary below lists what was skipped
            ds = load_dataset(
                args.source,
                split=split,
                resolution=args.resolution,
                skip_bad=args.skip_bad,
                all_captions=args.all_captions,
            )
        summary[ds.split] = {
            "kind": ds.kind,
            "records": len(ds),
            "skipped": len(ds.skipped),
            "unique_captions": len(set(ds.captions)),
            "fingerprint": ds.fingerprint(),
            "skipped_reasons": [reason for _, reason in ds.skipped],
        }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    for split, s in summary.items():
        print(
            f"{split}: {s['records']} records ({s['kind']}, {s['unique_captions']} unique captions, "
            f"{args.resolution} px), {s['skipped']} skipped, fingerprint {s['fingerprint']}"
        )
        for reason, n in Counter(s["skipped_reasons"]).most_common(10):
            print(f"  skipped{f' x{n}' if n > 1 else ''}: {reason}")
    return 0
