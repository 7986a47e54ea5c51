"""``ldmscale dreambooth``: fine-tune a trained model on a subject with a rare identifier.

ldmscale dreambooth --model runs/c32/model --subject subject/ --identifier sks \\
    --class-prompt "a large purple circle at the top left" --out runs/c32-sks
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ldmscale.dreambooth import DreamBoothConfig, dreambooth


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "dreambooth",
        help="fine-tune a trained model on 3-8 subject images (DreamBooth, prior preservation)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = DreamBoothConfig.__dataclass_fields__
    p.add_argument("--model", required=True, help="the trained (parent) model folder")
    p.add_argument("--subject", required=True, help="folder of the subject's images")
    p.add_argument("--identifier", required=True, help="rare word naming the subject, e.g. sks")
    p.add_argument(
        "--class-prompt", action="append", default=[],
        help="prompt of the subject's class (repeat for several; cycled for the prior images)",
    )  # fmt: skip
    p.add_argument("--out", required=True, help="run folder (rerun the command to resume)")
    p.add_argument("--instance-prompt", help="caption of every subject image, with {identifier}")
    p.add_argument("--train-data", help="the parent's training data (for the rarity check)")
    p.add_argument("--steps", type=int, default=d["steps"].default, help="default %(default)s")
    p.add_argument(
        "--lr", type=float, default=d["lr"].default,
        help="peak learning rate (default %(default)s; DreamBooth's window is narrow: too high "
        "overfits the subject images and degrades other prompts, docs/dreambooth.md)",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=d["batch_size"].default,
                   help="instance rows per step (default %(default)s)")  # fmt: skip
    p.add_argument("--ema-decay", type=float, default=d["ema_decay"].default,
                   help="default %(default)s: off (an EMA lags a short fine-tune)")  # fmt: skip
    p.add_argument(
        "--prior-images", type=int, default=d["prior_images"].default,
        help="class images drawn by the parent (0 = no prior preservation)",
    )  # fmt: skip
    p.add_argument("--prior-weight", type=float, default=d["prior_weight"].default)
    p.add_argument("--prior-batch", type=int, default=d["prior_batch"].default)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--eval-prompt", action="append", default=[],
        help="after training, sample this prompt (with {identifier}) and score subject "
        "fidelity against the subject images (repeatable); writes <out>/eval.json",
    )  # fmt: skip
    p.add_argument("--eval-n", type=int, default=8, help="images per --eval-prompt")
    p.add_argument(
        "--clip-model", help="local CLIP folder: CLIP image features for subject fidelity and "
        "CLIP score for prompt fidelity (default: EfficientNet-Lite0 features, no CLIP score)",
    )  # fmt: skip
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    cfg = DreamBoothConfig(
        model=args.model, subject=args.subject, identifier=args.identifier, out=args.out,
        class_prompts=tuple(args.class_prompt), instance_prompt=args.instance_prompt,
        train_data=args.train_data, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
        ema_decay=args.ema_decay, prior_images=args.prior_images,
        prior_weight=args.prior_weight, prior_batch=args.prior_batch, seed=args.seed,
    )  # fmt: skip
    model = dreambooth(cfg, progress=not args.no_progress)
    out = {"model": str(model)}
    if args.eval_prompt:
        from ldmscale.io import atomic_write_json
        from ldmscale.metrics.dreambooth import score_subject_folder

        scores = score_subject_folder(
            str(model), args.subject, args.eval_prompt, args.identifier, args.eval_n,
            clip_model=args.clip_model,
        )  # fmt: skip
        atomic_write_json(Path(args.out) / "eval.json", scores)
        out["eval"] = scores
    print(json.dumps(out))
    return 0
