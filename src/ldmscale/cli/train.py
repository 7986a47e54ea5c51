"""``ldmscale train``: train (or resume) one family member from a TOML/JSON config.

Rerunning the same command resumes from the newest complete checkpoint. Runs
multi-process unchanged under ``accelerate launch`` or ``torchrun`` (see docs/train.md).
``--init-from MODEL_DIR`` starts from a trained model's EMA weights, ``--teacher MODEL_DIR``
hands a trained model to the objective; the objective's own options are the config file's
``[objective_options]`` table.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

# Command-line overrides: flag -> (TrainConfig field, type).
OVERRIDES: dict[str, tuple[str, type]] = {
    "--run-dir": ("run_dir", str),
    "--c": ("c", int),
    "--steps": ("steps", int),
    "--batch-size": ("batch_size", int),
    "--lr": ("lr", float),
    "--seed": ("seed", int),
    "--data": ("data", str),
    "--vae": ("vae", str),
    "--latents": ("latents", str),
    "--embeddings": ("embeddings", str),
    "--objective": ("objective", str),
    "--init-from": ("init_from", str),
    "--teacher": ("teacher", str),
    "--mixed-precision": ("mixed_precision", str),
    "--checkpoint-every": ("checkpoint_every", int),
    "--log-every": ("log_every", int),
}
# Help beyond "override <field>" for the flags that need it.
HELP = {
    "objective": "the objective (a key of ldmscale.objectives.OBJECTIVES; default t2i)",
    "init_from": "start from this trained model folder's EMA UNet (e.g. runs/c64/model)",
    "teacher": "a trained model folder handed to the objective (e.g. a distillation teacher)",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a UNet family member on cached latents + text embeddings (resumable)",
        description=(
            "Train (or resume) one width-scaled UNet on the latent and caption-embedding caches. "
            "Flags override the config file's values; the objective's own options are the "
            "file's [objective_options] table. Rerun the same command to resume."
        ),
    )
    p.add_argument("--config", type=Path, help="TrainConfig as .toml or .json")
    for flag, (name, tp) in OVERRIDES.items():
        p.add_argument(
            flag,
            dest=f"ov_{name}",
            metavar=name.upper(),
            type=tp,
            default=None,
            help=HELP.get(name, f"override {name}"),
        )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete an existing run in run-dir (config, log, checkpoints, model) and start afresh",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    """The TrainConfig: the file (or defaults) with the command-line overrides applied."""
    from ldmscale.train import TrainConfig

    cfg = TrainConfig.load(args.config) if args.config else TrainConfig()
    changes = {
        name: getattr(args, f"ov_{name}")
        for name, _ in OVERRIDES.values()
        if getattr(args, f"ov_{name}") is not None
    }
    return cfg.replace(**changes) if changes else cfg


def run(args: argparse.Namespace) -> int:
    from ldmscale.train import train

    cfg = config_from_args(args)
    out = train(cfg, overwrite=args.overwrite, progress=not args.no_progress)
    if os.environ.get("RANK", "0") == "0":  # one line, not one per process
        print(out / "model")
    return 0
