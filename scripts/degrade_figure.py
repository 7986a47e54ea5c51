"""Draw docs/img/degrade_shapes32.png: HR | degraded LR | bicubic upsampling of the LR.

    PYTHONPATH=src python scripts/degrade_figure.py --preset shapes32 --out docs/img/degrade_shapes32.png

Rows are shapes validation images 0..n-1 (seed 0, 32 px); image i is degraded with
``torch.Generator().manual_seed(i)``. Every panel is ``resolution * zoom`` px wide,
nearest-neighbour (the LR is magnified ``scale`` times more than the HR).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ldmscale.data.degrade import PRESETS, degrade, upsample_bicubic
from ldmscale.data.shapes import make_example


def figure(preset: str, n: int, zoom: int, resolution: int = 32) -> Image.Image:
    cfg = PRESETS[preset]()
    hr = torch.from_numpy(
        np.stack([np.asarray(make_example(0, "validation", i, resolution)[0]) for i in range(n)])
    )
    lr = degrade(hr, cfg, [torch.Generator().manual_seed(i) for i in range(n)])
    up = upsample_bicubic(lr, cfg.scale)
    side = resolution * zoom
    gap = 4
    canvas = Image.new("RGB", (3 * side + 2 * gap, n * side + (n - 1) * gap), (128, 128, 128))
    for i in range(n):
        for j, img in enumerate((hr[i], lr[i], up[i])):
            panel = Image.fromarray(img.numpy()).resize((side, side), Image.NEAREST)
            canvas.paste(panel, (j * (side + gap), i * (side + gap)))
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="shapes32", choices=sorted(PRESETS))
    parser.add_argument("--n", type=int, default=6)
    parser.add_argument("--zoom", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("docs/img/degrade_shapes32.png"))
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure(args.preset, args.n, args.zoom).save(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
