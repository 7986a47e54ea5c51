"""``ldmscale distill``: distil a trained model into a few-step student (a thin layer over
``ldmscale.train.train``).

``--method consistency`` builds a ``TrainConfig`` with ``objective = "consistency"``
(:mod:`ldmscale.objectives.consistency`): the student starts from the teacher
(``init_from``), has the teacher's architecture, autoencoder, text encoder and prediction type
(read from its ``ldmscale_model.json``) and, unless told otherwise, its training data. Rerun
the same command to resume. ``--method guided`` builds the chain of
:func:`ldmscale.objectives.guided.guided_stage_configs` (stage one, then a progressive stage per
halving of ``--chain``) and runs its stages in order, each resuming when rerun.
docs/distill.md explains every setting.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ldmscale.cli.train import HELP as TRAIN_HELP
from ldmscale.cli.train import OVERRIDES as TRAIN_OVERRIDES

METHODS = ("consistency", "guided")
# Options both methods take (the rest are consistency's).
_GUIDED_OPTIONS = {"w_min", "w_max", "guidance_dim"}
# TrainConfig flags of `ldmscale train` that distill sets itself from the teacher.
_FROM_TEACHER = {"--c", "--objective", "--init-from", "--teacher"}
# Consistency options: flag -> (ConsistencyOptions field, type, help).
OPTION_FLAGS: dict[str, tuple[str, Any, str]] = {
    "--style": ("style", str, "lcm (default) or codi: the defaults of every switch below"),
    "--solver": ("solver", str, "who takes the ODE step: teacher (LCM) or target (CoDi)"),
    "--w-min": ("w_min", float, "lowest guidance w of the solver (ldmscale's w; 1 = none)"),
    "--w-max": ("w_max", float, "highest guidance w of the solver"),
    "--loss": ("loss", str, "l2 or huber (pseudo-Huber)"),
    "--data-term": ("data_term", float, "weight of CoDi's data term (0 = off)"),
    "--target-decay": ("target_decay", float, "EMA decay of the target network"),
    "--num-ddim-timesteps": ("num_ddim_timesteps", int, "grid size N (k = 1000 // N)"),
    "--guidance-dim": ("guidance_dim", int, "width of the guidance embedding"),
    "--sampler-steps": ("sampler_steps", int, "steps of the exported sampler hint (default 4)"),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "distill",
        help="distil a trained model into a few-step student (consistency or guided)",
        description=(
            "Distil a trained ldmscale model (--teacher, a model folder) into a student of the "
            "same width that samples in a few steps. --method consistency: the student starts "
            "as the teacher and learns to map any point of the teacher's ODE trajectory to its "
            "end (LCM- or CoDi-style, --style), against a target network that is an EMA of "
            "the student. The result is an ordinary model folder (task 'distilled', an "
            "LCMScheduler config, a sampler hint): sample it with `ldmscale sample --sampler "
            "lcm --steps 4`. --method guided: stage one regresses the teacher's CFG output with a "
            "guidance-conditioned student, then each progressive stage halves the steps of "
            "--chain (one run folder each, <run-dir>-g32, -pd16, ...; sample with --sampler "
            "ddim_grid). Training flags (--steps, --lr, ...) and a --config TrainConfig "
            "file work as for `ldmscale train`; the data default to the teacher's. See "
            "docs/distill.md."
        ),
    )
    p.add_argument(
        "--method",
        choices=METHODS,
        default="consistency",
        help="consistency (LCM/CoDi) or guided (Meng et al.'s stage one, then progressive "
        "distillation halving the steps)",
    )
    p.add_argument(
        "--chain",
        default="32,16,8,4",
        help="guided: the sampling steps of each stage, halving (stage one samples in the "
        "first; default 32,16,8,4)",
    )
    p.add_argument(
        "--stage-steps",
        default=None,
        help="guided: training steps of each stage, comma-separated (default --steps each)",
    )
    p.add_argument(
        "--teacher",
        type=Path,
        required=True,
        help="the trained model folder to distil (e.g. runs/c64/model): the student's start, "
        "architecture, autoencoder, text encoder and (by default) data",
    )
    p.add_argument("--config", type=Path, help="a TrainConfig .toml/.json to start from")
    for flag, (name, tp) in TRAIN_OVERRIDES.items():
        if flag not in _FROM_TEACHER:
            p.add_argument(
                flag, dest=f"ov_{name}", metavar=name.upper(), type=tp, default=None,
                help=TRAIN_HELP.get(name, f"override {name}"),
            )  # fmt: skip
    p.add_argument(
        "--ema-decay",
        dest="ov_ema_decay",
        metavar="EMA_DECAY",
        type=float,
        default=None,
        help="decay of the exported EMA of the student (default: the target decay)",
    )
    for flag, (name, tp, text) in OPTION_FLAGS.items():
        p.add_argument(
            flag, dest=f"opt_{name}", metavar=name.upper(), type=tp, default=None,
            help=text,
        )  # fmt: skip
    p.add_argument(
        "--guidance-embedding",
        dest="opt_guidance_embedding",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="give the student w as an embedding (LCM: on; CoDi: off)",
    )
    p.add_argument("--overwrite", action="store_true", help="start the run folder afresh")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run)


_DATA_KEYS = ("data", "latents", "embeddings", "resolution", "cache_dir")


def _options(args: argparse.Namespace, base: Any, objective: str) -> dict[str, Any]:
    """The objective options: the config file's (for the same objective), then the flags."""
    options = dict(base.objective_options) if base.objective == objective else {}
    given = {k[4:]: v for k, v in vars(args).items() if k.startswith("opt_") and v is not None}
    if objective == "guided":
        wrong = sorted(set(given) - _GUIDED_OPTIONS)
        if wrong:
            flags = ", ".join("--" + k.replace("_", "-") for k in wrong)
            raise ValueError(f"{flags}: options of --method consistency, not guided")
    options.update(given)
    return options


def config_from_args(args: argparse.Namespace):
    """The distillation ``TrainConfig`` (``--method consistency``) or the list of stage
    configs (``--method guided``): the file (or defaults), the teacher's architecture and
    data, the method's options, then the command-line overrides."""
    from ldmscale.modelfolder import find_model_folder, read_model_meta
    from ldmscale.objectives.consistency import ConsistencyOptions
    from ldmscale.objectives.guided import GuidedOptions, guided_stage_configs
    from ldmscale.train import TrainConfig

    folder, kind = find_model_folder(args.teacher)
    if kind != "ldmscale":
        raise ValueError(f"--teacher {args.teacher}: give an ldmscale model folder to distil")
    meta = read_model_meta(folder)
    base = TrainConfig.load(args.config) if args.config else TrainConfig()
    method = getattr(args, "method", "consistency")
    options = _options(args, base, method)
    if method == "guided":
        GuidedOptions.from_dict(options).check()
        decay, style, solver = base.ema_decay, "guided", "teacher"
    else:
        opts = ConsistencyOptions.from_dict(options).resolved()
        decay, style, solver = opts.target_decay, opts.style, opts.solver
    spec = meta.unet_spec
    changes: dict[str, Any] = dict(
        objective=method,
        objective_options=options,
        init_from=str(folder),
        teacher=str(folder) if solver == "teacher" else None,
        c=spec.c,
        layers_per_block=spec.layers_per_block,
        heads=spec.heads,
        head_dim=spec.head_dim,
        prediction_type=meta.prediction_type,
        vae=base.vae or str(folder / "vae"),
        text_encoder=base.text_encoder or meta.text_encoder.to_dict(),
    )
    if not args.config:
        changes["ema_decay"] = decay
        changes["run_dir"] = f"runs/{meta.run or folder.parent.name}-{style}"
    given = [k for k in _DATA_KEYS if getattr(args, f"ov_{k}", None) is not None]
    if not (args.config and (base.data or base.latents)) and not given:
        changes.update({k: meta.train_config[k] for k in _DATA_KEYS if k in meta.train_config})
    changes.update(
        {k[3:]: v for k, v in vars(args).items() if k.startswith("ov_") and v is not None}
    )
    cfg = base.replace(**changes)
    if method != "guided":
        return cfg
    chain = _int_list(args.chain, "--chain")
    stage_steps = _int_list(args.stage_steps, "--stage-steps") if args.stage_steps else None
    return guided_stage_configs(cfg, str(folder), chain, stage_steps)


def _int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ValueError(
            f"{flag} {text!r}: give integers separated by commas, e.g. 32,16,8,4"
        ) from None


def run(args: argparse.Namespace) -> int:
    from ldmscale.train import train

    cfgs = config_from_args(args)
    for cfg in cfgs if isinstance(cfgs, list) else [cfgs]:
        out = train(cfg, overwrite=args.overwrite, progress=not args.no_progress)
        if os.environ.get("RANK", "0") == "0":
            print(out / "model")
    return 0
