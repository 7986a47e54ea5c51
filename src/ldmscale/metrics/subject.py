"""Subject probe for the shapes DreamBooth subject (a ring; :mod:`ldmscale.data.subject`).

A deterministic detector, no training: in each quadrant of a uint8 ``[H, W, 3]`` image it
takes the *ink* (``255 - min(R, G, B)``, 0 on white), the quadrant's ink-weighted centroid
and the object's radius (from the ink area), and compares the mean ink in a small disc at
the centroid (radius ``CENTRE_RADIUS`` x the object's radius) with the mean ink of the
object's pixels. A ring's centroid falls in its hole (white): the ratio is near 0. Discs,
squares, triangles and crosses are inked at their centroid: the ratio is near 1. A quadrant
with ink on fewer than ``MIN_AREA`` of its pixels is empty.

``ring_map(images)`` -> bool ``[N, 4]`` (positions in ``shapes.VOCAB["position"]`` order);
the DreamBooth metrics read it as: subject at the prompted position (subject fidelity), or
anywhere (leakage into class prompts).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ldmscale.data.shapes import VOCAB

INK_THRESHOLD = 80.0
"""Ink (0..255) above which a pixel belongs to an object."""
MIN_AREA = 0.06
"""Fraction of a quadrant's pixels that must be ink for it to hold an object."""
CENTRE_RADIUS = 0.3
"""The centre disc's radius as a fraction of the object's radius."""
RING_RATIO = 0.5
"""A quadrant holds a ring when centre ink / object ink is below this."""


def _quadrants(h: int, w: int) -> list[tuple[slice, slice]]:
    """Quadrant slices in ``VOCAB["position"]`` order (top left, top right, bottom left, ...)."""
    out = []
    for position in VOCAB["position"]:
        rows = slice(h // 2, h) if position.startswith("bottom") else slice(0, h // 2)
        cols = slice(w // 2, w) if position.endswith("right") else slice(0, w // 2)
        out.append((rows, cols))
    return out


def ring_ratios(images: np.ndarray) -> np.ndarray:
    """Centre-to-object ink ratio per image and quadrant, float ``[N, 4]`` (NaN = empty)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"ring_ratios: expected uint8 [N, H, W, 3], got {images.shape}")
    ink = 255.0 - images.astype(np.float32).min(axis=-1)
    n, h, w = ink.shape
    out = np.full((n, 4), np.nan, dtype=np.float32)
    for q, (rs, cs) in enumerate(_quadrants(h, w)):
        quad = ink[:, rs, cs]
        qh, qw = quad.shape[1:]
        yy, xx = np.mgrid[0:qh, 0:qw].astype(np.float32) + 0.5
        for i in range(n):
            mask = quad[i] > INK_THRESHOLD
            area = int(mask.sum())
            if area < MIN_AREA * qh * qw:
                continue
            wgt = quad[i] * mask
            cy = float((wgt * yy).sum() / wgt.sum())
            cx = float((wgt * xx).sum() / wgt.sum())
            # The outer radius of a filled object of this ink area; a ring's is larger
            # (its hole is not inked), which only makes the centre disc wider.
            radius = max(np.sqrt(area / np.pi), 1.0)
            r_c = max(CENTRE_RADIUS * radius, 1.0)
            centre = (yy - cy) ** 2 + (xx - cx) ** 2 <= r_c**2
            out[i, q] = float(quad[i][centre].mean() / quad[i][mask].mean())
    return out


def ring_map(images: np.ndarray) -> np.ndarray:
    """Whether each quadrant holds a ring, bool ``[N, 4]`` (``VOCAB["position"]`` order)."""
    ratios = ring_ratios(images)
    return np.nan_to_num(ratios, nan=np.inf) < RING_RATIO


def subject_hits(images: np.ndarray, positions: Sequence[str]) -> np.ndarray:
    """Per image: a ring at its prompted ``positions[i]`` (bool ``[N]``)."""
    rings = ring_map(images)
    idx = [VOCAB["position"].index(p) for p in positions]
    if len(idx) != len(rings):
        raise ValueError(f"{len(rings)} images but {len(idx)} positions")
    return rings[np.arange(len(idx)), idx]


def leak_hits(images: np.ndarray) -> np.ndarray:
    """Per image: a ring anywhere (bool ``[N]``): the subject leaking into class prompts."""
    return ring_map(images).any(axis=1)
