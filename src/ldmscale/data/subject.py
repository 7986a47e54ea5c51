"""The embedded DreamBooth subject on ``shapes``: a ring, a shape no training caption describes.

The subject is a **large purple ring** (a circle with a hole of half its diameter), drawn by
the shapes renderer's geometry (:func:`ldmscale.data.shapes.place`, supersampled and
box-downsampled like every shapes image). Its class is "circle": the class prompt "a large
purple circle at the top left" names the ordinary disc, the identifier prompt "a large purple
sks circle at the top left" the ring. Training images show it at the *training positions*
(top left, top right); the bottom positions are held out for testing.

Subject folder (what ``ldmscale data subject --out DIR`` writes)::

    DIR/subject.json          {"name", "resolution", "class_noun", "train_positions",
                               "heldout_positions", "class_prompts", "heldout_prompts", ...}
    DIR/metadata.jsonl        {"file_name": "00000.png", "text": "a large purple {identifier}
                               circle at the top left", "attributes": {"objects": [...]}}
    DIR/00000.png ...

Captions hold the placeholder ``{identifier}``, replaced by the DreamBooth identifier.
A user's own subject folder needs only images (and optionally this metadata); see
:mod:`ldmscale.dreambooth`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ldmscale.data.dataset import DataError
from ldmscale.data.shapes import BACKGROUND_RGB, COLORS_RGB, SUPERSAMPLE, VOCAB, place
from ldmscale.io import atomic_path

SUBJECT_VERSION = "shapes-ring/1"
PLACEHOLDER = "{identifier}"
SUBJECT = {"shape": "circle", "color": "purple", "size": "large"}
"""The subject's caption attributes: its class noun is its shape."""
HOLE_FRACTION = 0.5
"""The ring's hole diameter as a fraction of its outer diameter."""
TRAIN_POSITIONS = ("top left", "top right")
HELDOUT_POSITIONS = ("bottom left", "bottom right")


def subject_caption(position: str, identifier: str = PLACEHOLDER) -> str:
    """``"a large purple <identifier> circle at the <position>"``."""
    s = SUBJECT
    return f"a {s['size']} {s['color']} {identifier} {s['shape']} at the {position}"


def class_caption(position: str) -> str:
    """The class prompt at ``position``: the subject's caption without the identifier."""
    s = SUBJECT
    return f"a {s['size']} {s['color']} {s['shape']} at the {position}"


def render_ring(bbox: list[float], resolution: int, color: str = SUBJECT["color"]) -> Image.Image:
    """A ring in pixel box ``bbox`` (``[x0, y0, x1, y1]``) on white, shapes-style."""
    s = SUPERSAMPLE
    img = Image.new("RGB", (resolution * s, resolution * s), BACKGROUND_RGB)
    draw = ImageDraw.Draw(img)
    x0, y0, x1, y1 = (v * s for v in bbox)
    draw.ellipse([x0, y0, x1, y1], fill=COLORS_RGB[color])
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, HOLE_FRACTION * (x1 - x0) / 2
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=BACKGROUND_RGB)
    return img.reduce(s)


def subject_example(
    seed: int, index: int, position: str, resolution: int
) -> tuple[Image.Image, dict[str, Any]]:
    """Image ``index`` of the subject at ``position`` and its attributes (pure function)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7, index]))
    bbox = place(SUBJECT["size"], position, resolution, rng)
    obj = {**SUBJECT, "position": position, "bbox": bbox, "subject": True}
    return render_ring(bbox, resolution), {"objects": [obj], "background": "white"}


def subject_info(n: int, resolution: int, seed: int) -> dict[str, Any]:
    """``subject.json`` of the shapes subject."""
    return {
        "name": "shapes-ring",
        "version": SUBJECT_VERSION,
        "n_images": n,
        "resolution": resolution,
        "seed": seed,
        "class_noun": SUBJECT["shape"],
        "subject": dict(SUBJECT, hole_fraction=HOLE_FRACTION),
        "train_positions": list(TRAIN_POSITIONS),
        "heldout_positions": list(HELDOUT_POSITIONS),
        "class_prompts": [class_caption(p) for p in VOCAB["position"]],
        "heldout_prompts": [subject_caption(p) for p in HELDOUT_POSITIONS],
        "train_prompts": [subject_caption(p) for p in TRAIN_POSITIONS],
    }


def write_subject(
    root: str | Path, n: int = 5, resolution: int = 32, seed: int = 0, overwrite: bool = False
) -> Path:
    """Write the shapes subject folder (``n`` images, 2..8, alternating the training
    positions) to ``root``; an identical existing folder is kept. Returns ``root``."""
    root = Path(root)
    if not 2 <= n <= 8:
        raise DataError(f"subject: n={n} images; DreamBooth uses 3-8 (at least 2)")
    info = subject_info(n, resolution, seed)
    if (root / "subject.json").is_file():
        try:
            if json.loads((root / "subject.json").read_text()) == info:
                return root
        except json.JSONDecodeError:
            pass
    if root.exists() and any(root.iterdir()) and not overwrite:
        raise DataError(
            f"{root} already exists and is not this subject folder; choose another folder "
            "or pass --overwrite"
        )
    with atomic_path(root) as tmp:
        tmp.mkdir(parents=True)
        lines = []
        for i in range(n):
            position = TRAIN_POSITIONS[i % len(TRAIN_POSITIONS)]
            img, attributes = subject_example(seed, i, position, resolution)
            name = f"{i:05d}.png"
            img.save(tmp / name, format="PNG")
            row = {"file_name": name, "text": subject_caption(position), "attributes": attributes}
            lines.append(json.dumps(row))
        (tmp / "metadata.jsonl").write_text("".join(line + "\n" for line in lines))
        (tmp / "subject.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return root


def heldout_rings(n: int, resolution: int = 32, seed: int = 1) -> tuple[np.ndarray, list[str]]:
    """``n`` renders of the subject at the held-out positions (uint8 ``[n, H, W, 3]``) and
    their positions: real subject images a detector must recognise."""
    images, positions = [], []
    for i in range(n):
        position = HELDOUT_POSITIONS[i % len(HELDOUT_POSITIONS)]
        img, _ = subject_example(seed, 1000 + i, position, resolution)
        images.append(np.asarray(img))
        positions.append(position)
    return np.stack(images), positions
