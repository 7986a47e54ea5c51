"""Text alignment on ``shapes``: does a generated image show exactly what its prompt asks?

An image *aligns* when the probe's predicted objects match the prompt's objects one to one:
same number of objects, and every attribute the prompt names (shape, colour, size,
position) equal. The score is the fraction of aligned images. The prompt's objects come
either from its ground-truth ``attributes`` record (preferred) or from parsing the caption
with the shapes vocabulary (:func:`parse_caption`).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ldmscale.metrics.common import ImageBatches, MetricsError
from ldmscale.metrics.probe import Probe

ATTRIBUTES = ("shape", "color", "size", "position")


def parse_caption(caption: str, vocab: dict[str, list[str]]) -> list[dict[str, str]]:
    """Objects named by a shapes caption, e.g. ``"a large red circle at the top left and ..."``.

    The caption is split into clauses at ``" and "``/``","``; in each clause every attribute
    whose vocabulary value occurs as whole words is recorded (longest value first, so
    ``"top left"`` wins over ``"left"``). Clauses naming no shape are dropped.
    """
    objects = []
    for clause in re.split(r"\s+and\s+|,|;", caption.lower()):
        obj: dict[str, str] = {}
        text = f" {' '.join(clause.split())} "
        for attr in ATTRIBUTES:
            for value in sorted(vocab.get(attr, []), key=len, reverse=True):
                if f" {value.lower()} " in text:
                    obj[attr] = value
                    text = text.replace(f" {value.lower()} ", " | ", 1)
                    break
        if "shape" in obj:
            objects.append(obj)
    return objects


def objects_match(predicted: Sequence[dict[str, str]], target: Sequence[dict[str, str]]) -> bool:
    """True when there is a one-to-one pairing in which each target attribute is equal."""
    if len(predicted) != len(target):
        return False
    keys = [[a for a in ATTRIBUTES if a in t] for t in target]
    for perm in itertools.permutations(predicted):
        if all(all(p.get(a) == t[a] for a in k) for p, t, k in zip(perm, target, keys)):
            return True
    return False


@dataclass(frozen=True)
class AlignmentResult:
    """``score``: fraction of aligned images; ``hits``: per-image bool (for bootstrap CIs)."""

    score: float
    hits: np.ndarray
    predicted: list[list[dict[str, str]]]


def text_alignment(
    images: ImageBatches,
    probe: Probe,
    captions: Sequence[str] | None = None,
    attributes: Sequence[dict[str, Any] | list[dict[str, Any]]] | None = None,
    batch_size: int = 256,
) -> AlignmentResult:
    """Fraction of images whose probe-predicted objects match their prompt.

    Give ``attributes`` (the prompts' ground-truth records, ``{"objects": [...]}`` or object
    lists) or ``captions`` (parsed with the probe's vocabulary); one per image, in order.
    """
    if (captions is None) == (attributes is None):
        raise MetricsError("text_alignment: give exactly one of `captions` or `attributes`")
    if attributes is not None:
        targets = [a.get("objects", []) if isinstance(a, dict) else list(a) for a in attributes]
    else:
        targets = [parse_caption(c, probe.vocab) for c in captions]
    predicted = probe.predict(images, batch_size)
    if len(predicted) != len(targets):
        raise MetricsError(
            f"{len(predicted)} images but {len(targets)} prompts; give one prompt per image"
        )
    hits = np.array([objects_match(p, t) for p, t in zip(predicted, targets)], bool)
    return AlignmentResult(float(hits.mean()), hits, predicted)
