"""``ldmscale sample``: sample a trained model (or a local SD folder) to PNGs, a grid and samples.json."""

from __future__ import annotations

import argparse
from pathlib import Path

from ldmscale.cli import UserError
from ldmscale.samplers import SAMPLER_NAMES, SAMPLERS


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sample",
        help="sample images from a trained model or a diffusers SD folder",
        description=(
            "Sample images with DDIM / DDPM / DPM-Solver++ and classifier-free guidance "
            "(eps = u + w (c - u); --guidance 1 = no guidance). Image j of the request uses seed "
            "S + j (--seed S), or the --seeds list (one per image, or n-per-prompt seeds reused "
            "for every prompt). Writes 00000.png..., grid.png and samples.json (last)."
        ),
    )
    p.add_argument("--model", required=True, type=Path, help="model folder (ldmscale or SD)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    src.add_argument("--prompts-file", type=Path, help="text file, one prompt per line")
    src.add_argument(
        "--lr-dataset",
        type=Path,
        help="super-resolution models: upscale the first --n images of this dataset's split "
        "(--split), degraded as the model was trained (image i with seed --lr-seed0 + i)",
    )
    src.add_argument(
        "--lr-folder", type=Path, help="super-resolution models: upscale these LR image files"
    )
    p.add_argument("--n", type=int, default=16, help="images of --lr-dataset to upscale")
    p.add_argument("--split", default="validation", help="split of --lr-dataset")
    p.add_argument("--lr-seed0", type=int, default=0, help="degradation seed of LR image 0")
    p.add_argument(
        "--sampler",
        choices=SAMPLER_NAMES,
        default="ddim",
        help="; ".join(f"{e.name}: {e.description}" for e in SAMPLERS.values()),
    )
    p.add_argument("--steps", type=int, default=50)
    p.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="CFG scale w (1 = none; default 7.5, and 1 for super-resolution models)",
    )
    p.add_argument(
        "--timestep-spacing",
        choices=("leading", "trailing", "linspace"),
        default=None,
        help="override the scheduler config's timestep spacing",
    )
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=None, help="image j uses seed S + j (default 0)")
    seeds.add_argument("--seeds", type=str, default=None, help="comma-separated seeds")
    p.add_argument("--n-per-prompt", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run)


def _read_prompts(args: argparse.Namespace) -> list[str]:
    if args.prompt:
        return list(args.prompt)
    path: Path = args.prompts_file
    if not path.is_file():
        raise UserError(f"prompts file not found: {path}")
    prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise UserError(f"{path} holds no prompts; write one prompt per line")
    return prompts


def _parse_seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError as e:
        raise UserError(
            f"--seeds must be comma-separated integers, e.g. 0,1,2; got {text!r}"
        ) from e


def _upscale(args: argparse.Namespace, model, cfg):
    """Upscale an LR set with an SR model: (result, per-image labels)."""
    from ldmscale.data.degrade import DegradeConfig
    from ldmscale.sr_eval import lr_set_from_dataset, lr_set_from_folder
    from ldmscale.upscale import upscale

    sr = model.meta.get("sr")
    if not sr:
        raise UserError(
            f"{args.model} is not a super-resolution model; --lr-dataset/--lr-folder are for "
            "models trained with objective = 'sr' (give --prompt for text-to-image models)"
        )
    if args.lr_folder is not None:
        lrset = lr_set_from_folder(args.lr_folder)
    else:
        hr_size = model.latent_shape[1] * int(sr["scale"])
        degradation = DegradeConfig.from_dict(sr["degradation"])
        lrset = lr_set_from_dataset(
            args.lr_dataset, args.n, hr_size, degradation, args.split, args.lr_seed0
        )
    seeds = _parse_seeds(args.seeds)
    if seeds is None:
        seeds = [(args.seed or 0) + i for i in range(len(lrset))]
    if len(seeds) != len(lrset):
        raise UserError(f"{len(seeds)} --seeds for {len(lrset)} LR images: give one per image")
    result = upscale(
        model, lrset.lr, seeds, cfg, batch_size=args.batch_size, progress=not args.no_progress
    )
    return result, [f"LR {i}" for i in range(len(lrset))]


def run(args: argparse.Namespace) -> int:
    from ldmscale.model import load_model
    from ldmscale.sampling import SamplerConfig, expand_requests, generate, save_samples

    sr = args.lr_dataset is not None or args.lr_folder is not None
    if args.steps < 1:
        raise UserError(f"--steps must be >= 1, got {args.steps}")
    guidance = args.guidance if args.guidance is not None else (1.0 if sr else 7.5)
    cfg = SamplerConfig(
        name=args.sampler,
        steps=args.steps,
        guidance=guidance,
        timestep_spacing=args.timestep_spacing,
    )
    model = load_model(args.model, device=args.device)
    if sr:
        result, per_image = _upscale(args, model, cfg)
    else:
        if model.meta.get("sr"):
            raise UserError(
                f"{args.model} is a super-resolution model: give it low-resolution inputs "
                "(--lr-dataset DATASET or --lr-folder FOLDER) instead of prompts"
            )
        prompts = _read_prompts(args)
        per_image, seeds = expand_requests(
            prompts, args.n_per_prompt, seed=args.seed, seeds=_parse_seeds(args.seeds)
        )
        result = generate(
            model, per_image, seeds, cfg, batch_size=args.batch_size, progress=not args.no_progress
        )
    out = save_samples(result, per_image, args.out)
    print(
        f"wrote {len(per_image)} images to {out} ({cfg.name}, {cfg.steps} steps, w={cfg.guidance}; "
        f"sampling cost {result.sampling_cost:.4g}, {result.flops / 1e9:.4g} GFLOPs, "
        f"{result.seconds:.1f} s)"
    )
    return 0
