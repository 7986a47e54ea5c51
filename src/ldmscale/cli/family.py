"""``ldmscale family``: parameters, GFLOPs and normalized cost of the width-scaled UNet family."""

from __future__ import annotations

import argparse
import csv
import io
import json
import textwrap

from ldmscale.config import ConfigError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "family",
        help="params, GFLOPs and normalized cost of the UNet family (the paper's Table 1)",
        description=textwrap.fill(
            "Count the parameters and the GFLOPs of one UNet forward (batch 1, one timestep) of "
            "each family member, from the model itself on the meta device. Two FLOP "
            "conventions: 'dense' (torch FlopCounterMode: 2 FLOPs per multiply-add of "
            "matmul/conv/attention) and 'xla' (conv taps on zero padding skipped, elementwise ops "
            "counted, as XLA's cost analysis; reproduces the paper's GFLOPs). Normalized cost = "
            "GFLOPs / GFLOPs of the reference width (xla). --paper reproduces Table 1 with the "
            "paper's values beside ours.",
            width=88,
        ),
        epilog=(
            "examples:\n"
            "  ldmscale family --paper\n"
            "  ldmscale family --paper --json\n"
            "  ldmscale family --widths 8,16,32 --latent-size 8 --context-len 32 "
            "--context-dim 384 --reference 32 --csv"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--paper",
        action="store_true",
        help="the paper's Table 1: its 11 widths, 4x64x64 latent, 77x1024 context, reference 320",
    )
    p.add_argument(
        "--widths",
        type=str,
        metavar="C,C,...",
        default=None,
        help="comma-separated base widths c, multiples of 8 (default: the paper's widths)",
    )
    p.add_argument(
        "--latent-size", type=int, default=None, metavar="N", help="latent side (default 64)"
    )
    p.add_argument(
        "--latent-channels", type=int, default=None, metavar="N", help="latent channels (default 4)"
    )
    p.add_argument(
        "--context-len", type=int, default=None, metavar="N", help="text tokens (default 77)"
    )
    p.add_argument(
        "--context-dim", type=int, default=None, metavar="N", help="text width (default 1024)"
    )
    p.add_argument(
        "--reference",
        type=int,
        default=None,
        metavar="C",
        help="reference width for normalized cost (320)",
    )
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print a JSON list, one object per width")
    fmt.add_argument("--csv", action="store_true", help="print CSV")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run)


_SHAPE_OPTIONS = ("latent_size", "latent_channels", "context_len", "context_dim", "reference")


def parse_widths(text: str) -> list[int]:
    try:
        widths = [int(w) for w in text.replace(" ", "").split(",") if w]
    except ValueError:
        raise ConfigError(
            f"--widths {text!r}: expected comma-separated integers, e.g. --widths 16,32,64"
        ) from None
    if not widths:
        raise ConfigError("--widths is empty; give comma-separated widths, e.g. --widths 16,32,64")
    return widths


def run(args: argparse.Namespace) -> int:
    from ldmscale.family import PAPER_WIDTHS, REFERENCE_WIDTH, UNetSpec, family_table

    if args.paper:
        given = [
            f"--{n.replace('_', '-')}"
            for n in ("widths", *_SHAPE_OPTIONS)
            if getattr(args, n) is not None
        ]
        if given:
            raise ConfigError(
                f"--paper fixes the paper's setting; drop {', '.join(given)} or drop --paper"
            )
    widths = parse_widths(args.widths) if args.widths is not None else list(PAPER_WIDTHS)
    overrides = {
        name: getattr(args, name)
        for name in ("latent_size", "latent_channels", "context_len", "context_dim")
        if getattr(args, name) is not None
    }
    base = UNetSpec(**overrides)
    reference = args.reference if args.reference is not None else REFERENCE_WIDTH
    rows = family_table(widths, base, reference_c=reference)
    if args.json:
        print(json.dumps(rows, indent=2))
    elif args.csv:
        print(to_csv(rows), end="")
    else:
        print(format_table(rows, base, reference))
    return 0


def to_csv(rows: list[dict]) -> str:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _gflops(x: float) -> str:
    if x >= 1:
        return f"{x:.1f}" if x >= 100 else f"{x:.2f}"
    return f"{x:.3g}"


def format_table(rows: list[dict], base, reference: int) -> str:
    paper = any("paper_gflops" in r for r in rows)
    head = ["c", "groups", "params", "GFLOPs dense", "GFLOPs xla", "norm cost"]
    if paper:
        head += ["paper params", "paper GFLOPs", "paper cost", "xla err %", "dense err %"]
    lines = [head]
    for r in rows:
        line = [
            str(r["c"]),
            str(r["norm_num_groups"]),
            f"{r['params']:,}",
            _gflops(r["gflops_dense"]),
            _gflops(r["gflops_xla"]),
            f"{r['norm_cost']:.3f}",
        ]
        if paper:
            if "paper_gflops" in r:
                line += [
                    r["paper_params"],
                    f"{r['paper_gflops']:.1f}",
                    f"{r['paper_norm_cost']:.2f}",
                    f"{r['err_xla_pct']:+.2f}",
                    f"{r['err_dense_pct']:+.2f}",
                ]
            else:
                line += [""] * 5
        lines.append(line)
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    text = [
        f"UNet family: latent {base.latent_channels}x{base.latent_size}x{base.latent_size}, "
        f"context {base.context_len}x{base.context_dim}, batch 1, one forward; "
        f"norm cost = xla GFLOPs / GFLOPs at c={reference}"
    ]
    for i, row in enumerate(lines):
        text.append("  ".join(cell.rjust(w) for cell, w in zip(row, widths)))
        if i == 0:
            text.append("  ".join("-" * w for w in widths))
    if paper:
        text.append(
            "note: the paper's c=64 GFLOPs (25.3) contradicts its own norm cost 0.07 "
            "(= ~55 GFLOPs); see docs/family.md"
        )
    return "\n".join(text)
