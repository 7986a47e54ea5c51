"""User data sources: Hugging Face *imagefolder* folders and COCO caption JSON.

This module only reads the listings (which image goes with which caption) and
checks what can be checked without decoding pixels: JSON syntax, captions, file
names that stay inside the dataset folder, and that each image file exists.
Decoding and resizing happen in :mod:`ldmscale.data.dataset`.

Supported layouts (``split`` is ``train`` or ``validation``; ``val``/``valid``/``dev``
are accepted as folder names for ``validation``):

* imagefolder with splits: ``<root>/<split>/metadata.jsonl`` plus images beside it;
* flat imagefolder (all train): ``<root>/metadata.jsonl`` plus images;
* a ``metadata.jsonl`` path given directly;
* COCO: ``<root>/annotations/captions_<split><year>.json`` with images in
  ``<root>/<split><year>/`` (or ``<root>/images/<split><year>/``), or the JSON path
  given directly.

Each metadata line is ``{"file_name": "relative/path.png", "text": "caption", ...}``;
``caption`` is accepted instead of ``text``, and an ``attributes`` object is kept.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from ldmscale.data.dataset import DataError

SPLIT_ALIASES: dict[str, tuple[str, ...]] = {
    "train": ("train", "training"),
    "validation": ("validation", "val", "valid", "dev"),
    "test": ("test", "testing"),
}
CAPTION_COLUMNS = ("text", "caption")
SKIP_HINT = "or pass skip_bad=True (CLI: --skip-bad) to skip bad entries"

Report = Callable[[str, str], None]
"""``report(key, message)``: raise a DataError, or record the entry as skipped."""


@dataclass
class Entry:
    """One image-caption pair before decoding. ``origin`` says where it was listed."""

    key: str
    path: Path
    caption: str
    attributes: dict[str, Any] | None
    origin: str


def canonical_split(split: str) -> str:
    """Map a split name or alias (``val``, ``dev``, ...) to train / validation / test."""
    s = split.lower()
    for name, aliases in SPLIT_ALIASES.items():
        if s in aliases:
            return name
    raise DataError(
        f"unknown split {split!r}; use one of {sorted(SPLIT_ALIASES)} (or val/valid/dev)"
    )


def safe_relative(name: Any) -> str | None:
    """``name`` as a POSIX relative path inside the folder, or None if it escapes it."""
    if not isinstance(name, str) or not name.strip():
        return None
    text = name.replace("\\", "/")
    if PurePosixPath(text).is_absolute() or PureWindowsPath(name).drive or text.startswith("/"):
        return None
    parts = [p for p in PurePosixPath(text).parts if p != "."]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


def _caption(row: dict[str, Any]) -> Any:
    for col in CAPTION_COLUMNS:
        if col in row:
            return row[col]
    return None


def read_metadata(metadata: Path, report: Report) -> list[Entry]:
    """Entries listed in an imagefolder ``metadata.jsonl`` (images relative to its folder)."""
    folder = metadata.parent
    entries: list[Entry] = []
    try:
        text = metadata.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{metadata}: cannot read ({e}); it must be a UTF-8 JSON-lines file") from e
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{metadata}: line {n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            report(
                f"line {n}",
                f"{where}: not valid JSON ({e.msg} at column {e.colno}); each line must be one "
                'object such as {"file_name": "0001.png", "text": "a caption"}; fix or delete the line, '
                + SKIP_HINT,
            )
            continue
        if not isinstance(row, dict):
            report(
                f"line {n}",
                f"{where}: expected a JSON object, got {type(row).__name__}; {SKIP_HINT}",
            )
            continue
        if "file_name" not in row:
            report(
                f"line {n}",
                f'{where}: no "file_name" field; add the image\'s relative path, {SKIP_HINT}',
            )
            continue
        rel = safe_relative(row["file_name"])
        if rel is None:
            report(
                f"line {n}",
                f"{where}: file_name {row['file_name']!r} is not a relative path inside {folder} "
                f"(absolute paths and '..' are refused); move the image into the folder and list "
                f"it relative to it, {SKIP_HINT}",
            )
            continue
        caption = _caption(row)
        if caption is None:
            report(
                rel, f'{where} ({rel}): no caption; add a "text" (or "caption") field, {SKIP_HINT}'
            )
            continue
        if not isinstance(caption, str) or not caption.strip():
            report(
                rel,
                f'{where} ({rel}): empty caption {caption!r}; write a non-empty "text", {SKIP_HINT}',
            )
            continue
        path = folder / rel
        if not path.is_file():
            report(
                rel,
                f"{where}: image file {path} not found; fix file_name or delete the line, {SKIP_HINT}",
            )
            continue
        attributes = row.get("attributes")
        entries.append(
            Entry(
                rel,
                path,
                caption.strip(),
                attributes if isinstance(attributes, dict) else None,
                where,
            )
        )
    return entries


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path}: not valid JSON ({e.msg} at line {e.lineno}); re-export the file"
        ) from e
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({e})") from e


def coco_image_dir(ann_file: Path) -> Path:
    """The image folder of ``annotations/captions_<name>.json``: ``<root>/<name>`` or ``<root>/images/<name>``."""
    name = ann_file.stem.removeprefix("captions_")
    root = ann_file.parent.parent if ann_file.parent.name == "annotations" else ann_file.parent
    candidates = [root / name, root / "images" / name, ann_file.parent / name]
    for c in candidates:
        if c.is_dir():
            return c
    tried = ", ".join(str(c) for c in candidates)
    raise DataError(
        f"{ann_file}: image folder not found (tried {tried}); put the {name} images there"
    )


def read_coco(ann_file: Path, report: Report, all_captions: bool = False) -> list[Entry]:
    """Entries of a COCO caption file: one per image (its first caption), or one per caption."""
    data = _load_json(ann_file)
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("images"), list)
        or not isinstance(data.get("annotations"), list)
    ):
        raise DataError(
            f'{ann_file}: not a COCO caption file; it needs "images": [{{"id", "file_name"}}] '
            'and "annotations": [{"image_id", "caption"}]'
        )
    image_dir = coco_image_dir(ann_file)
    captions: dict[Any, list[Any]] = {}
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann:
            report(
                f"annotation {i}", f'{ann_file}: annotations[{i}] has no "image_id"; {SKIP_HINT}'
            )
            continue
        captions.setdefault(ann["image_id"], []).append(ann.get("caption"))
    entries: list[Entry] = []
    for i, img in enumerate(data["images"]):
        where = f"{ann_file}: images[{i}]"
        if not isinstance(img, dict) or "file_name" not in img or "id" not in img:
            report(f"image {i}", f'{where}: needs "id" and "file_name"; {SKIP_HINT}')
            continue
        rel = safe_relative(img["file_name"])
        if rel is None:
            report(
                f"image {i}",
                f"{where}: file_name {img['file_name']!r} is not a relative path inside {image_dir} "
                f"(absolute paths and '..' are refused); {SKIP_HINT}",
            )
            continue
        caps = captions.get(img["id"], [])
        good = [c.strip() for c in caps if isinstance(c, str) and c.strip()]
        if not good:
            what = "no caption" if not caps else "only empty captions"
            report(rel, f"{where} ({rel}): {what} in annotations; add a caption, {SKIP_HINT}")
            continue
        path = image_dir / rel
        if not path.is_file():
            report(rel, f"{where}: image file {path} not found; {SKIP_HINT}")
            continue
        if all_captions:
            entries += [Entry(f"{rel}#{k}", path, c, None, where) for k, c in enumerate(good)]
        else:
            entries.append(Entry(rel, path, good[0], None, where))
    return entries


def _coco_files(root: Path, split: str) -> list[Path]:
    prefix = {"train": "captions_train", "validation": "captions_val", "test": "captions_test"}[
        split
    ]
    return sorted((root / "annotations").glob(f"{prefix}*.json"))


def _split_dir(root: Path, split: str) -> Path | None:
    for alias in SPLIT_ALIASES[split]:
        if (root / alias / "metadata.jsonl").is_file():
            return root / alias
    return None


def available_splits(source: str | Path) -> list[str]:
    """The canonical split names a source folder provides (e.g. ``["train", "validation"]``)."""
    root = Path(source)
    if root.is_file():
        return ["train"]
    found = [s for s in SPLIT_ALIASES if _split_dir(root, s) or _coco_files(root, s)]
    if not found and (root / "metadata.jsonl").is_file():
        found = ["train"]
    return found


def list_entries(
    source: str | Path, split: str, report: Report, all_captions: bool = False
) -> tuple[str, list[Entry]]:
    """``(kind, entries)`` of ``split`` in ``source``; kind is ``imagefolder`` or ``coco``."""
    root = Path(source)
    split = canonical_split(split)
    if not root.exists():
        raise DataError(
            f"dataset source {root} does not exist; give a dataset folder or generate one with `ldmscale data shapes --out {root}`"
        )
    if root.is_file():
        if root.suffix == ".jsonl":
            return "imagefolder", read_metadata(root, report)
        if root.suffix == ".json":
            return "coco", read_coco(root, report, all_captions)
        raise DataError(
            f"{root}: expected a dataset folder, a metadata.jsonl or a COCO captions_*.json file"
        )
    coco = _coco_files(root, split)
    if coco:
        if len(coco) > 1:
            names = ", ".join(str(c) for c in coco)
            raise DataError(
                f"{root}: several COCO caption files for split {split!r} ({names}); pass one of them as the source"
            )
        return "coco", read_coco(coco[0], report, all_captions)
    folder = _split_dir(root, split)
    if folder is not None:
        return "imagefolder", read_metadata(folder / "metadata.jsonl", report)
    if split == "train" and (root / "metadata.jsonl").is_file():
        return "imagefolder", read_metadata(root / "metadata.jsonl", report)
    have = available_splits(root)
    if have:
        raise DataError(
            f"{root}: no {split!r} split (found: {', '.join(have)}); pass split= one of those"
        )
    raise DataError(
        f"{root}: not a dataset folder: no metadata.jsonl (imagefolder: one JSON line per image with "
        '"file_name" and "text") and no annotations/captions_*.json (COCO) found'
    )
