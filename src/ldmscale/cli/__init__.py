"""The ``ldmscale`` command line: a thin layer over the library API.

Each sub-command lives in its own module in this package and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a
function ``(args) -> int``. Errors the user can fix (bad config, bad data,
missing files) are printed as one clear line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ldmscale import __version__

# Sub-command modules, in the order `--help` lists them (the data flow's order).
COMMANDS = (
    "family",
    "data",
    "autoencoder",
    "train",
    "distill",
    "dreambooth",
    "sample",
    "sweep",
    "metrics",
    "floors",
    "frontier",
    "report",
    "study",
)


class UserError(Exception):
    """An error caused by the user's input; printed without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ldmscale",
        description=(
            "Scaling study of latent diffusion models (Mei et al., 2024): build the "
            "width-scaled SD UNet family, train it text-to-image, sample it with DDIM / DDPM / "
            "DPM-Solver++ and classifier-free guidance, and find which size wins under a "
            "sampling budget."
        ),
    )
    parser.add_argument("--version", action="version", version=f"ldmscale {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"ldmscale.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"ldmscale.cli.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (UserError, ValueError, FileNotFoundError) as e:
        # Project errors subclass ValueError (ConfigError, DataError, ...) and carry the fix.
        if getattr(args, "debug", False):
            raise
        print(f"ldmscale {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"ldmscale {args.command}: interrupted; rerun the same command to resume",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
