"""The embedded ``shapes`` dataset: procedural text-to-image data, no downloads.

Each image shows one or two coloured shapes on a white background; the caption
names every object's size, colour, shape and position, e.g.
``"a large red circle at the top left and a small blue triangle at the bottom right"``.
Positions are the four quadrants; two objects never share one, so they never
overlap. The vocabulary (:data:`VOCAB`) is small and visually distinct so that a
tiny probe classifier can read every attribute back at 32 px.

Generation is deterministic: image ``i`` of split ``s`` draws from its own
``numpy`` generator seeded by ``(seed, s, i)``, so the same seed gives
byte-identical PNGs whatever the counts. Shapes are drawn at 4x the target
resolution and box-downsampled (anti-aliasing). The dataset folder is written to
a temporary folder and renamed into place, so a killed run never leaves a
half-written dataset that looks complete.

Folder format (see docs/architecture.md)::

    <root>/dataset.json
    <root>/train/metadata.jsonl         {"file_name": "00000.png", "text": ..., "attributes": {...}}
    <root>/train/00000.png ...
    <root>/validation/...
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from ldmscale.data.dataset import DataError
from ldmscale.io import atomic_path
from ldmscale.progress import show_bar

GENERATOR_VERSION = "shapes/1"
"""Bumped whenever a change alters the generated pixels or captions."""

VOCAB: dict[str, list[str]] = {
    "shape": ["circle", "square", "triangle", "cross"],
    "color": ["red", "green", "blue", "yellow", "purple", "black"],
    "size": ["small", "large"],
    "position": ["top left", "top right", "bottom left", "bottom right"],
}
"""Attribute values the captions use; keys are the attribute names."""

COLORS_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 230),
    "yellow": (240, 200, 20),
    "purple": (150, 40, 190),
    "black": (20, 20, 20),
}
BACKGROUND = "white"
BACKGROUND_RGB = (255, 255, 255)

# Object side as a fraction of a quadrant's side, and the free margin kept inside it.
SIZE_FRACTION = {"small": 0.42, "large": 0.78}
MARGIN_FRACTION = 0.06
SUPERSAMPLE = 4
SPLITS = ("train", "validation")
_SPLIT_IDS = {"train": 0, "validation": 1}


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_IDS[split], index]))


def sample_objects(
    rng: np.random.Generator, resolution: int, max_objects: int = 2
) -> list[dict[str, Any]]:
    """Draw one to ``max_objects`` (1 or 2) objects' attributes and their pixel boxes.

    ``bbox`` is ``[x0, y0, x1, y1]`` in pixels of the ``resolution`` image, as floats
    (x1, y1 exclusive). Objects sit in distinct quadrants, so boxes never overlap.
    The count is drawn first (also for ``max_objects=1``), so the default variant's
    draws are unchanged.
    """
    n = 1 + int(rng.integers(2))
    n = min(n, max_objects)
    positions = rng.choice(len(VOCAB["position"]), size=n, replace=False)
    objects = []
    for p in positions:
        position = VOCAB["position"][int(p)]
        shape = VOCAB["shape"][int(rng.integers(len(VOCAB["shape"])))]
        color = VOCAB["color"][int(rng.integers(len(VOCAB["color"])))]
        size = VOCAB["size"][int(rng.integers(len(VOCAB["size"])))]
        objects.append(
            {
                "shape": shape,
                "color": color,
                "size": size,
                "position": position,
                "bbox": place(size, position, resolution, rng),
            }
        )
    return objects


def place(size: str, position: str, resolution: int, rng: np.random.Generator) -> list[float]:
    """A random pixel box ``[x0, y0, x1, y1]`` for an object of ``size`` in the quadrant
    ``position``: centred in it, jittered uniformly within its free margin (two draws)."""
    cell = resolution / 2
    side = SIZE_FRACTION[size] * cell
    slack = max(0.0, (cell - side) / 2 - MARGIN_FRACTION * cell)
    jx, jy = rng.uniform(-slack, slack, size=2)
    col = 1 if position.endswith("right") else 0
    row = 1 if position.startswith("bottom") else 0
    cx = (col + 0.5) * cell + jx
    cy = (row + 0.5) * cell + jy
    return [
        round(float(v), 2) for v in (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
    ]


def rerender(attributes: dict[str, Any], resolution: int, rng: np.random.Generator) -> Image.Image:
    """A fresh image of the same caption: the objects of ``attributes`` (an example's
    attributes) with the same shape, colour, size and quadrant, placed anew with ``rng``.

    This is a draw from the data's p(image | caption), the image a perfect generator could
    draw for that caption; floors use it (see :mod:`ldmscale.floors`)."""
    objects = [
        {**o, "bbox": place(o["size"], o["position"], resolution, rng)}
        for o in attributes["objects"]
    ]
    return render(objects, resolution)


def caption_for(objects: list[dict[str, Any]]) -> str:
    """The caption of a list of objects: ``"a <size> <color> <shape> at the <position>"`` joined by ``and``."""
    parts = [f"a {o['size']} {o['color']} {o['shape']} at the {o['position']}" for o in objects]
    return " and ".join(parts)


def render(objects: list[dict[str, Any]], resolution: int) -> Image.Image:
    """Draw the objects at ``SUPERSAMPLE`` x resolution and box-downsample to ``resolution``."""
    s = SUPERSAMPLE
    img = Image.new("RGB", (resolution * s, resolution * s), BACKGROUND_RGB)
    draw = ImageDraw.Draw(img)
    for o in objects:
        x0, y0, x1, y1 = (v * s for v in o["bbox"])
        fill = COLORS_RGB[o["color"]]
        if o["shape"] == "circle":
            draw.ellipse([x0, y0, x1, y1], fill=fill)
        elif o["shape"] == "square":
            draw.rectangle([x0, y0, x1, y1], fill=fill)
        elif o["shape"] == "triangle":
            draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
        elif o["shape"] == "cross":
            t = (x1 - x0) / 3
            draw.rectangle([x0 + t, y0, x1 - t, y1], fill=fill)
            draw.rectangle([x0, y0 + t, x1, y1 - t], fill=fill)
        else:  # pragma: no cover - VOCAB and render must agree
            raise ValueError(f"unknown shape {o['shape']!r}")
    return img.reduce(s)


def make_example(
    seed: int, split: str, index: int, resolution: int, max_objects: int = 2
) -> tuple[Image.Image, str, dict]:
    """Image, caption and attributes of example ``index`` of ``split`` (pure function of its args)."""
    objects = sample_objects(_rng(seed, split, index), resolution, max_objects)
    attributes = {"objects": objects, "background": BACKGROUND}
    return render(objects, resolution), caption_for(objects), attributes


def dataset_info(
    n_train: int, n_val: int, resolution: int, seed: int, max_objects: int = 2
) -> dict[str, Any]:
    """The ``dataset.json`` content of a shapes dataset with these parameters.

    ``max_objects`` is recorded only for the one-object variant (``1``), so folders of the
    default two-object variant written before it existed still match.
    """
    info: dict[str, Any] = {
        "name": "shapes",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "resolution": resolution,
        "counts": {"train": n_train, "validation": n_val},
        "splits": list(SPLITS),
        "vocabulary": VOCAB,
        "caption_template": "a <size> <color> <shape> at the <position> [and ...]",
    }
    if max_objects != 2:
        info["max_objects"] = max_objects
        info["caption_template"] = "a <size> <color> <shape> at the <position>"
    return info


def generate_shapes(
    root: str | Path,
    n_train: int,
    n_val: int,
    resolution: int = 32,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool | None = None,
    max_objects: int = 2,
) -> Path:
    """Write the shapes dataset to ``root`` and return ``root``.

    ``max_objects``: 2 (the default: one or two objects per image) or 1 (the one-object
    variant, every caption names exactly one object; easier to learn, used by CPU presets).

    If ``root`` already holds a shapes dataset with the same parameters it is kept
    as is (generation is deterministic). A different existing ``root`` is replaced
    only with ``overwrite=True``. ``progress=None`` shows a bar for >= 5,000 images.
    """

    root = Path(root)
    if resolution < 8:
        raise DataError(f"shapes: resolution {resolution} is too small; use 8 px or more")
    if n_train < 0 or n_val < 0 or n_train + n_val == 0:
        raise DataError(
            f"shapes: need n_train >= 0, n_val >= 0 and some images, got {n_train}, {n_val}"
        )
    if max_objects not in (1, 2):
        raise DataError(f"shapes: max_objects must be 1 or 2, got {max_objects}")
    info = dataset_info(n_train, n_val, resolution, seed, max_objects)
    if root.exists():
        existing = root / "dataset.json"
        if existing.is_file():
            try:
                if json.loads(existing.read_text()) == info:
                    return root
            except json.JSONDecodeError:
                pass
        if not overwrite and (not root.is_dir() or any(root.iterdir())):
            raise DataError(
                f"{root} already exists and is not a shapes dataset with these parameters; "
                "choose another folder or pass overwrite=True (CLI: --overwrite)"
            )
    total = n_train + n_val
    show = show_bar(progress, auto=total >= 5000)
    bar = tqdm(total=total, desc="shapes", unit="img", disable=not show)
    with atomic_path(root) as tmp:
        for split, n in zip(SPLITS, (n_train, n_val)):
            folder = tmp / split
            folder.mkdir(parents=True)
            width = max(5, len(str(max(n - 1, 0))))
            lines = []
            for i in range(n):
                img, caption, attributes = make_example(seed, split, i, resolution, max_objects)
                name = f"{i:0{width}d}.png"
                img.save(folder / name, format="PNG", optimize=False)
                lines.append(
                    json.dumps({"file_name": name, "text": caption, "attributes": attributes})
                )
                bar.update(1)
            (folder / "metadata.jsonl").write_text("".join(line + "\n" for line in lines))
        (tmp / "dataset.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    bar.close()
    return root
