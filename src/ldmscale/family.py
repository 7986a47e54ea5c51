"""The width-scaled Stable-Diffusion-v1.5 UNet family of the paper (its Table 1).

A member is fixed by its base width ``c``: ``block_out_channels = (c, 2c, 4c, 4c)``,
everything else as SD v1.5 (two ResNet layers per block, cross-attention in the
first three down blocks and last three up blocks, 8 attention heads).

Normalization-group rule: GroupNorm needs the group count to divide every
channel width; SD uses 32 groups. Here ``norm_num_groups = gcd(c, 32)``, which is
32 for every paper width (all multiples of 32) and still valid for the narrow
CPU widths (c=16 -> 16 groups, c=8 -> 8 groups). ``c`` must be a positive
multiple of 8 so that the 8 attention heads divide every width.

Optional overrides (all off by default, and then absent from ``UNetSpec.to_dict``, so every
existing spec, its hash and Table 1 are unchanged): ``extra_in_channels`` (inputs concatenated
to the latent, e.g. a low-resolution image for super-resolution), ``num_class_embeds`` (a class
embedding added to the time embedding, e.g. a noise level), ``time_cond_proj_dim`` (a
guidance-embedding projection, diffusers' ``timestep_cond``). An objective asks for them
(``Objective.unet_overrides``); :mod:`ldmscale.surgery` grows a trained parent into them.

Cost accounting (all counted from the model itself, on the meta device):
``count_params``, ``count_gflops`` (one UNet forward at batch 1: latent
``(latent_channels + extra_in_channels) x latent_size x latent_size``, context ``context_len x
context_dim``, one timestep, a class label and a guidance embedding where the spec has them;
conventions ``dense`` and ``xla``, see
:mod:`ldmscale.flops`), ``normalized_cost`` (GFLOPs / GFLOPs of the same spec at
the reference width, c=320 in the paper) and ``family_table``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from ldmscale.config import Config, ConfigError, omit_if_default

PAPER_WIDTHS: tuple[int, ...] = (64, 96, 128, 160, 192, 224, 256, 288, 320, 512, 768)
REFERENCE_WIDTH = 320
SD_HEADS = 8
#: The UNetSpec fields an objective may override (``Objective.unet_overrides``).
OVERRIDE_FIELDS = ("extra_in_channels", "num_class_embeds", "time_cond_proj_dim")


class PaperRow(NamedTuple):
    """One column of the paper's Table 1 (reference values, for comparison only)."""

    params: str  # as printed: "39M" ... "5B"
    gflops: float
    norm_cost: float


# Table 1 of Mei et al. (2024). Note: the c=64 GFLOPs entry (25.3) contradicts its own
# normalized cost (0.07 x 789.3 = 55); every count puts it at about 52-57 (docs/family.md).
PAPER_TABLE: dict[int, PaperRow] = {
    64: PaperRow("39M", 25.3, 0.07),
    96: PaperRow("83M", 102.7, 0.13),
    128: PaperRow("145M", 161.5, 0.20),
    160: PaperRow("223M", 233.5, 0.30),
    192: PaperRow("318M", 318.5, 0.40),
    224: PaperRow("430M", 416.6, 0.53),
    256: PaperRow("558M", 527.8, 0.67),
    288: PaperRow("704M", 652.0, 0.83),
    320: PaperRow("866M", 789.3, 1.00),
    512: PaperRow("2B", 1887.5, 2.39),
    768: PaperRow("5B", 4082.6, 5.17),
}


@dataclass
class UNetSpec(Config):
    """One member of the family.

    c: base width (channels of the first block).
    context_dim: width of the text tokens the cross-attention reads (1024 in the paper).
    context_len: number of text tokens (77 in the paper).
    latent_channels, latent_size: the latent the UNet denoises (4 x 64 x 64 in the paper).
    heads: attention heads in every block (SD's 8) when ``head_dim`` is 0.
    head_dim: when > 0, a fixed head *width* instead: each block gets ``width // head_dim``
        heads (at least 1). A choice for narrow CPU widths, where SD's 8 heads are 1-4
        channels wide; it changes no parameter count, so Table 1 stays exact.
    extra_in_channels: channels concatenated to the latent at the input (``conv_in`` takes
        ``latent_channels + extra_in_channels``; the output keeps ``latent_channels``). 0 = none.
    num_class_embeds: size of a class embedding added to the time embedding (the UNet's
        ``class_labels``). 0 = none.
    time_cond_proj_dim: width of a guidance embedding projected into the time embedding (the
        UNet's ``timestep_cond``). 0 = none.
    The three overrides are left out of ``to_dict`` while 0.
    """

    c: int = 320
    context_dim: int = 1024
    context_len: int = 77
    latent_channels: int = 4
    latent_size: int = 64
    layers_per_block: int = 2
    heads: int = SD_HEADS
    head_dim: int = 0
    extra_in_channels: int = omit_if_default(0)
    num_class_embeds: int = omit_if_default(0)
    time_cond_proj_dim: int = omit_if_default(0)

    def __post_init__(self) -> None:
        for name in OVERRIDE_FIELDS:
            if getattr(self, name) < 0:
                raise ConfigError(
                    f"UNetSpec.{name} must be >= 0 (0 = off), got {getattr(self, name)}"
                )
        if self.head_dim < 0:
            raise ConfigError(
                f"UNetSpec.head_dim must be >= 0 (0 = fixed head count), got {self.head_dim}"
            )
        if self.head_dim:
            validate_width(self.c, 1)
        else:
            validate_width(self.c, self.heads)
        for name in ("context_dim", "context_len", "latent_channels", "latent_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"UNetSpec.{name} must be >= 1, got {getattr(self, name)}")
        if self.latent_size % 8:
            raise ConfigError(
                f"UNetSpec.latent_size must be a multiple of 8 (three 2x downsamplings), "
                f"got {self.latent_size}"
            )

    @property
    def block_heads(self) -> int | tuple[int, ...]:
        """Head count per block (diffusers' ``attention_head_dim``, SD's naming for it)."""
        if not self.head_dim:
            return self.heads
        c = self.c
        return tuple(max(1, w // self.head_dim) for w in (c, 2 * c, 4 * c, 4 * c))

    @property
    def norm_num_groups(self) -> int:
        return math.gcd(self.c, 32)

    def unet_config(self) -> dict:
        """Keyword arguments for diffusers ``UNet2DConditionModel`` (the overrides only when set)."""
        c = self.c
        overrides = {}
        if self.num_class_embeds:
            overrides["num_class_embeds"] = self.num_class_embeds
        if self.time_cond_proj_dim:
            overrides["time_cond_proj_dim"] = self.time_cond_proj_dim
        return dict(
            sample_size=self.latent_size,
            in_channels=self.latent_channels + self.extra_in_channels,
            out_channels=self.latent_channels,
            down_block_types=(
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "DownBlock2D",
            ),
            up_block_types=(
                "UpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
            ),
            block_out_channels=(c, 2 * c, 4 * c, 4 * c),
            layers_per_block=self.layers_per_block,
            cross_attention_dim=self.context_dim,
            attention_head_dim=self.block_heads,  # diffusers' SD naming: the head count
            norm_num_groups=self.norm_num_groups,
            flip_sin_to_cos=True,
            freq_shift=0,
            act_fn="silu",
            norm_eps=1e-5,
            downsample_padding=1,
            mid_block_scale_factor=1,
            center_input_sample=False,
            **overrides,
        )


def validate_width(c: int, heads: int = SD_HEADS) -> None:
    """Refuse a base width the architecture cannot build, saying which are valid."""
    if not isinstance(c, int) or c < heads or c % heads:
        raise ConfigError(
            f"invalid base width c={c!r}: c must be a positive multiple of {heads} "
            f"(the {heads} attention heads must divide every block width), e.g. 8, 16, 32, 64 ... 768; "
            f"the paper's widths are {list(PAPER_WIDTHS)}"
        )


def build_unet(spec: UNetSpec, device: str = "cpu"):
    """Build a randomly initialised diffusers ``UNet2DConditionModel`` for ``spec``.

    ``device="meta"`` builds it without allocating weights (for counting).
    """
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device(device):
        return UNet2DConditionModel(**spec.unet_config())


def unet_inputs(spec: UNetSpec, device: str = "meta", batch: int = 1) -> tuple[tuple, dict]:
    """``(args, kwargs)`` for one UNet forward: latent (with the extra input channels), one
    timestep per item, text context, and ``class_labels`` / ``timestep_cond`` when the spec
    has a class embedding / a guidance projection."""
    import torch

    channels = spec.latent_channels + spec.extra_in_channels
    sample = torch.zeros(batch, channels, spec.latent_size, spec.latent_size, device=device)
    timestep = torch.full((batch,), 500, dtype=torch.long, device=device)
    context = torch.zeros(batch, spec.context_len, spec.context_dim, device=device)
    kwargs: dict[str, Any] = {"encoder_hidden_states": context}
    if spec.num_class_embeds:
        kwargs["class_labels"] = torch.zeros(batch, dtype=torch.long, device=device)
    if spec.time_cond_proj_dim:
        kwargs["timestep_cond"] = torch.zeros(batch, spec.time_cond_proj_dim, device=device)
    return (sample, timestep), kwargs


_COUNT_CACHE: dict[tuple[str, str], Any] = {}
_META_MODELS: dict[str, Any] = {}  # the most recent meta-device models, by spec


def meta_unet(spec: UNetSpec):
    """A meta-device model for ``spec`` (cached: counting several conventions builds it once)."""
    key = spec.to_json()
    if key not in _META_MODELS:
        if len(_META_MODELS) >= 2:
            _META_MODELS.pop(next(iter(_META_MODELS)))
        _META_MODELS[key] = build_unet(spec, "meta").eval()
    return _META_MODELS[key]


def _cached(spec: UNetSpec, what: str, compute) -> Any:
    key = (spec.to_json(), what)
    if key not in _COUNT_CACHE:
        _COUNT_CACHE[key] = compute()
    return _COUNT_CACHE[key]


def count_params(spec: UNetSpec) -> int:
    """Number of UNet parameters (counted on a meta-device model, no memory used)."""

    def compute() -> int:
        return sum(p.numel() for p in meta_unet(spec).parameters())

    return _cached(spec, "params", compute)


def count_flops(spec: UNetSpec, convention: str = "xla"):
    """The full :class:`ldmscale.flops.FlopCount` (total and per-rule breakdown) of one
    UNet forward at batch 1, counted on the meta device."""
    from ldmscale import flops

    flops.check_convention(convention)

    def compute():
        args, kwargs = unet_inputs(spec, "meta")
        return flops.count_flops(meta_unet(spec), args, kwargs, convention)

    return _cached(spec, f"flops:{convention}", compute)


def count_gflops(spec: UNetSpec, convention: str = "xla") -> float:
    """GFLOPs (1e9 FLOPs) of one UNet forward at batch 1 (see :mod:`ldmscale.flops`
    for the ``dense`` and ``xla`` conventions). CFG's doubled batch is not included."""
    return count_flops(spec, convention).total / 1e9


def normalized_cost(
    spec: UNetSpec, reference_c: int = REFERENCE_WIDTH, convention: str = "xla"
) -> float:
    """GFLOPs of ``spec`` divided by GFLOPs of the same spec with ``c = reference_c`` and SD's
    head layout (8 heads: the paper's reference model at this latent and context)."""
    reference = spec.replace(c=reference_c, head_dim=0, heads=SD_HEADS)
    return count_gflops(spec, convention) / count_gflops(reference, convention)


def model_costs(spec: UNetSpec) -> dict[str, float]:
    """``norm_cost`` (vs the same spec at c=320, xla convention), ``gflops_xla``,
    ``gflops_dense``: one UNet forward at batch 1 (what an exported model records)."""
    return {
        "norm_cost": float(normalized_cost(spec)),
        "gflops_xla": float(count_gflops(spec, convention="xla")),
        "gflops_dense": float(count_gflops(spec, convention="dense")),
    }


def round_params(n: int) -> str:
    """Format a parameter count as the paper's Table 1 does: "39M", "866M", "2B"."""
    return f"{round(n / 1e9)}B" if n >= 1e9 else f"{round(n / 1e6)}M"


def is_paper_setting(spec: UNetSpec) -> bool:
    """True when ``spec`` matches Table 1's setting except for ``c`` (4x64x64 latent,
    77x1024 context, SD layout), so that the paper's numbers are comparable."""
    return spec.replace(c=REFERENCE_WIDTH) == UNetSpec()


def family_table(
    widths: Iterable[int] = PAPER_WIDTHS,
    base_spec: UNetSpec | None = None,
    reference_c: int = REFERENCE_WIDTH,
    conventions: Iterable[str] = ("dense", "xla"),
    progress: bool | None = None,
) -> list[dict[str, Any]]:
    """One row per width: ``c, norm_num_groups, params, gflops_<conv>, norm_cost_<conv>``,
    ``norm_cost`` (xla when counted, else the first convention) and, for the paper's
    widths in the paper's setting, ``paper_params, paper_gflops, paper_norm_cost`` and
    ``err_<conv>_pct`` (our GFLOPs vs the paper's, in percent).

    ``base_spec`` gives everything but ``c`` (default: the paper's setting).
    ``progress=None`` shows a progress bar only on a terminal.
    """
    from tqdm import tqdm

    from ldmscale import flops

    base_spec = base_spec or UNetSpec()
    conventions = [flops.check_convention(c) for c in conventions]
    if not conventions:
        raise ConfigError("family_table needs at least one FLOP convention ('dense', 'xla')")
    widths = list(widths)
    if not widths:
        raise ConfigError("family_table needs at least one width, e.g. [16, 32, 64]")
    specs = [base_spec.replace(c=c) for c in widths]  # validates every width first
    reference = base_spec.replace(c=reference_c)
    paper = is_paper_setting(base_spec) and reference_c == REFERENCE_WIDTH
    rows = []
    for spec in tqdm(
        specs, desc="counting widths", disable=None if progress is None else not progress
    ):
        row: dict[str, Any] = {
            "c": spec.c,
            "norm_num_groups": spec.norm_num_groups,
            "params": count_params(spec),
        }
        for conv in conventions:
            row[f"gflops_{conv}"] = count_gflops(spec, conv)
        for conv in conventions:
            row[f"norm_cost_{conv}"] = row[f"gflops_{conv}"] / count_gflops(reference, conv)
        row["norm_cost"] = row[
            "norm_cost_xla" if "xla" in conventions else f"norm_cost_{conventions[0]}"
        ]
        if paper and spec.c in PAPER_TABLE:
            ref = PAPER_TABLE[spec.c]
            row.update(
                paper_params=ref.params,
                params_rounded=round_params(row["params"]),
                paper_gflops=ref.gflops,
                paper_norm_cost=ref.norm_cost,
            )
            for conv in conventions:
                row[f"err_{conv}_pct"] = 100 * (row[f"gflops_{conv}"] / ref.gflops - 1)
        rows.append(row)
    return rows
