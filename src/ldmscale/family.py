"""The width-scaled Stable-Diffusion-v1.5 UNet family of the paper (its Table 1).

A member is fixed by its base width ``c``: ``block_out_channels = (c, 2c, 4c, 4c)``,
everything else as SD v1.5 (two ResNet layers per block, cross-attention in the
first three down blocks and last three up blocks, 8 attention heads).

Normalization-group rule: GroupNorm needs the group count to divide every
channel width; SD uses 32 groups. Here ``norm_num_groups = gcd(c, 32)``, which is
32 for every paper width (all multiples of 32) and still valid for the narrow
CPU widths (c=16 -> 16 groups, c=8 -> 8 groups). ``c`` must be a positive
multiple of 8 so that the 8 attention heads divide every width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ldmscale.config import Config, ConfigError

PAPER_WIDTHS: tuple[int, ...] = (64, 96, 128, 160, 192, 224, 256, 288, 320, 512, 768)
REFERENCE_WIDTH = 320
SD_HEADS = 8


@dataclass
class UNetSpec(Config):
    """One member of the family.

    c: base width (channels of the first block).
    context_dim: width of the text tokens the cross-attention reads (1024 in the paper).
    context_len: number of text tokens (77 in the paper).
    latent_channels, latent_size: the latent the UNet denoises (4 x 64 x 64 in the paper).
    """

    c: int = 320
    context_dim: int = 1024
    context_len: int = 77
    latent_channels: int = 4
    latent_size: int = 64
    layers_per_block: int = 2
    heads: int = SD_HEADS

    def __post_init__(self) -> None:
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
    def norm_num_groups(self) -> int:
        return math.gcd(self.c, 32)

    def unet_config(self) -> dict:
        """Keyword arguments for diffusers ``UNet2DConditionModel``."""
        c = self.c
        return dict(
            sample_size=self.latent_size,
            in_channels=self.latent_channels,
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
            attention_head_dim=self.heads,  # diffusers' SD naming: this is the head count
            norm_num_groups=self.norm_num_groups,
            flip_sin_to_cos=True,
            freq_shift=0,
            act_fn="silu",
            norm_eps=1e-5,
            downsample_padding=1,
            mid_block_scale_factor=1,
            center_input_sample=False,
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
