"""What a dataset source holds, read from its listings without decoding any image.

:func:`describe_source` tells an imagefolder from a COCO root (:mod:`ldmscale.data.folder`),
counts the image-caption pairs of each split it provides, and says whether every record
carries shapes-style attributes (``{"objects": [{"shape", "color", "size", "position"}]}``
with values in the dataset's vocabulary, as ``shapes`` writes them), which is what the shapes
probe behind the ``fd_probe`` and ``alignment`` metrics trains on. ``ldmscale study --data``
uses it to choose and check the metrics before any training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ldmscale.data.dataset import DataError
from ldmscale.data.folder import available_splits, list_entries

#: The attributes every object of a shapes-style record has (the probe reads these four).
SHAPES_ATTRIBUTES = ("shape", "color", "size", "position")


@dataclass(frozen=True)
class SourceInfo:
    """A dataset source as its listings describe it.

    kind: ``imagefolder`` or ``coco``. counts: listed image-caption pairs per split (canonical
    names: ``train``, ``validation``, ``test``). shapes_attributes: every record of every
    listed split has shapes-style attributes in the vocabulary (``dataset.json``'s, else
    ``ldmscale.data.shapes.VOCAB``).
    """

    source: str
    kind: str
    counts: dict[str, int]
    shapes_attributes: bool


def _vocabulary(root: Path) -> dict[str, list[str]]:
    info = root / "dataset.json"
    if info.is_file():
        try:
            vocab = json.loads(info.read_text()).get("vocabulary")
        except (json.JSONDecodeError, OSError, AttributeError):
            vocab = None
        if isinstance(vocab, dict):
            return vocab
    from ldmscale.data.shapes import VOCAB

    return VOCAB


def is_shapes_record(attributes: Any, vocab: dict[str, list[str]]) -> bool:
    """Whether one record's ``attributes`` are shapes-style: at least one object, each with
    every attribute of :data:`SHAPES_ATTRIBUTES` and values in ``vocab``."""
    if not isinstance(attributes, dict):
        return False
    objects = attributes.get("objects")
    if not isinstance(objects, list) or not objects:
        return False
    return all(
        isinstance(o, dict) and all(o.get(a) in vocab.get(a, ()) for a in SHAPES_ATTRIBUTES)
        for o in objects
    )


def describe_source(source: str | Path) -> SourceInfo:
    """Kind, split sizes and shapes attributes of ``source`` (a folder, a ``metadata.jsonl`` or a
    COCO ``captions_*.json``); a :class:`DataError` naming the problem and the fix when it is no
    dataset, has no split, or lists a bad entry (missing image, empty caption, ...)."""
    root = Path(source)
    if not root.exists():
        raise DataError(
            f"dataset source {root} does not exist; give an image folder (metadata.jsonl with "
            '"file_name" and "text") or a COCO root (annotations/captions_*.json), see docs/data.md'
        )

    def strict(key: str, message: str) -> None:
        raise DataError(message)

    splits = available_splits(root)
    if not splits:  # list_entries names what it looked for
        list_entries(root, "train", strict)
    vocab = _vocabulary(root if root.is_dir() else root.parent)
    kind, counts, shapes = "imagefolder", {}, True
    for split in splits:
        kind, entries = list_entries(root, split, strict)
        counts[split] = len(entries)
        shapes = shapes and all(is_shapes_record(e.attributes, vocab) for e in entries)
    return SourceInfo(str(source), kind, counts, shapes and bool(counts))
