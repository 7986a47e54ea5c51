"""Image-caption datasets: ``Record``, ``ImageCaptionDataset``, ``load_dataset``, ``DataError``.

Conventions: an image is a float32 tensor ``[3, H, W]`` in ``[-1, 1]`` (``x / 127.5 - 1``
of the uint8 RGB pixels). Every image is converted to RGB (transparency composited on
white, EXIF rotation applied), resized so its shorter side equals ``resolution``
(bicubic, anti-aliased) and centre-cropped to ``resolution x resolution``.

Bad-data policy: every image is decoded once at load time (``validate=True``, the
default), so a corrupt file is reported when the dataset is built, with its path,
not halfway through training. With ``skip_bad=True`` bad entries are skipped,
listed in ``dataset.skipped`` as ``(key, reason)`` and summarised in one warning.
An empty dataset is always an error. Small datasets keep their decoded pixels in
memory (up to ``max_memory_bytes``); larger ones re-decode from disk on access.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ldmscale.progress import show_bar

FINGERPRINT_VERSION = "ldmscale-data/1"


class DataError(ValueError):
    """Bad or missing data; the message names the file and says how to fix it."""


class Record(NamedTuple):
    """One example. ``image``: float32 ``[3, H, W]`` in ``[-1, 1]``; ``attributes``: shapes ground truth or None."""

    key: str
    image: torch.Tensor
    caption: str
    attributes: dict[str, Any] | None


def stack_images(records: list[Record]) -> torch.Tensor:
    """DataLoader ``collate_fn`` for images only: the records' images as ``[B, 3, H, W]``."""
    return torch.stack([r.image for r in records])


def decode_image(data: bytes, resolution: int) -> np.ndarray:
    """Decode image bytes to uint8 RGB ``[resolution, resolution, 3]`` (shorter side resize, centre crop).

    Raises whatever PIL raises for unreadable data; callers wrap it in a DataError.
    """
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        img = ImageOps.exif_transpose(img)
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            img = Image.new("RGB", rgba.size, (255, 255, 255))
            img.paste(rgba, mask=rgba.getchannel("A"))
        elif img.mode != "RGB":
            img = img.convert("RGB")
        w, h = img.size
        side = min(w, h)
        left, top = (w - side) / 2, (h - side) / 2
        if (w, h) != (resolution, resolution):
            img = img.resize(
                (resolution, resolution),
                Image.Resampling.BICUBIC,
                box=(left, top, left + side, top + side),
            )
        return np.asarray(img, dtype=np.uint8).copy()


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` -> float32 ``[3, H, W]`` in ``[-1, 1]``."""
    return torch.from_numpy(pixels).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


class ImageCaptionDataset(Dataset):
    """A validated list of (image, caption) pairs at one square resolution.

    ``captions``, ``keys`` and ``attributes`` are lists aligned with the records;
    ``skipped`` lists ``(key, reason)`` of entries left out under ``skip_bad``.
    """

    def __init__(
        self,
        keys: list[str],
        paths: list[Path],
        captions: list[str],
        attributes: list[dict[str, Any] | None],
        file_hashes: list[str],
        resolution: int,
        pixels: np.ndarray | None = None,
        skipped: list[tuple[str, str]] | None = None,
        source: str = "",
        split: str = "train",
        kind: str = "imagefolder",
    ) -> None:
        self.keys = keys
        self.paths = paths
        self.captions = captions
        self.attributes = attributes
        self.file_hashes = file_hashes
        self.resolution = resolution
        self.skipped = skipped or []
        self.source = source
        self.split = split
        self.kind = kind
        self._pixels = pixels
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def image_uint8(self, i: int) -> np.ndarray:
        """Image ``i`` as uint8 RGB ``[H, W, 3]``."""
        if self._pixels is not None:
            return self._pixels[i]
        path = self.paths[i]
        try:
            return decode_image(path.read_bytes(), self.resolution)
        except Exception as e:
            raise DataError(f"{path}: cannot read image ({e}); replace or remove the file") from e

    def images_uint8(self, indices: list[int] | None = None) -> np.ndarray:
        """Images as one uint8 array ``[N, H, W, 3]`` (all of them by default), e.g. as FID references."""
        idx = range(len(self)) if indices is None else indices
        if self._pixels is not None:
            return self._pixels[list(idx)]
        r = self.resolution
        out = np.empty((len(idx), r, r, 3), dtype=np.uint8)
        for j, i in enumerate(idx):
            out[j] = self.image_uint8(i)
        return out

    def __getitem__(self, i: int) -> Record:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)}")
        i = i % len(self)
        return Record(
            self.keys[i], to_tensor(self.image_uint8(i)), self.captions[i], self.attributes[i]
        )

    def fingerprint(self) -> str:
        """Stable content hash (16 hex chars) of the file bytes, keys, captions and resolution.

        Use it as a cache key: it changes when any image, caption or the resolution does,
        and not when the folder is moved.
        """
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(f"{FINGERPRINT_VERSION}\0{self.resolution}\0{len(self)}\0".encode())
            for key, fh, cap in zip(self.keys, self.file_hashes, self.captions):
                h.update(f"{key}\0{fh}\0{cap}\0".encode())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    @staticmethod
    def collate(records: list[Record]) -> dict[str, Any]:
        """DataLoader ``collate_fn``: ``{"keys", "images" [B,3,H,W], "captions", "attributes"}``."""
        return {
            "keys": [r.key for r in records],
            "images": stack_images(records),
            "captions": [r.caption for r in records],
            "attributes": [r.attributes for r in records],
        }

    def __repr__(self) -> str:
        return (
            f"ImageCaptionDataset({self.source!r}, split={self.split!r}, kind={self.kind!r}, "
            f"n={len(self)}, resolution={self.resolution}, skipped={len(self.skipped)})"
        )


def _read_and_decode(
    path: Path, resolution: int, decode: bool, keep: bool
) -> tuple[str, np.ndarray | None, str | None]:
    """``(sha256 of the bytes, pixels if decoded and kept, problem or None)``."""
    try:
        data = path.read_bytes()
    except OSError as e:
        return "", None, f"cannot read file ({e})"
    digest = hashlib.sha256(data).hexdigest()
    if not decode:
        return digest, None, None
    try:
        pixels = decode_image(data, resolution)
    except (
        Exception
    ) as e:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError, ...)
        return digest, None, f"not a readable image ({type(e).__name__}: {e})"
    return digest, pixels if keep else None, None


def _entries(n: int) -> str:
    return f"{n} bad entr{'y' if n == 1 else 'ies'}"


def _decode_all(
    paths: list[Path],
    resolution: int,
    validate: bool,
    in_memory: bool,
    split: str,
    progress: bool | None,
) -> dict[Path, tuple]:
    """``{path: _read_and_decode(path, ...)}`` for every file, on up to 4 threads, with a
    progress bar for >= 2,000 files (``progress`` None)."""
    show = show_bar(progress, auto=len(paths) >= 2000)
    workers = min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        decoded = tqdm(
            pool.map(lambda p: _read_and_decode(p, resolution, validate, in_memory), paths),
            total=len(paths),
            desc=f"checking {split}",
            unit="img",
            disable=not show,
        )
        return dict(zip(paths, decoded))


def load_dataset(
    source: str | Path,
    split: str = "train",
    resolution: int = 32,
    skip_bad: bool = False,
    all_captions: bool = False,
    validate: bool = True,
    max_memory_bytes: int = 2 << 30,
    progress: bool | None = None,
) -> ImageCaptionDataset:
    """Load ``split`` of an imagefolder (``metadata.jsonl``) or COCO caption folder.

    ``split``: ``train`` or ``validation`` (``val``, ``valid``, ``dev`` accepted).
    ``all_captions``: COCO only, one record per caption instead of per image (first caption).
    ``validate``: decode every image now (default); with False, images are only
    hashed now and a corrupt one raises DataError when it is accessed.
    ``progress=None`` shows a bar for >= 2,000 images; none inside
    ``ldmscale.progress.progress_bars(False)``.
    Raises :class:`DataError` naming the file and the fix, unless ``skip_bad``.
    """
    from ldmscale.data.folder import SKIP_HINT, canonical_split, list_entries

    if resolution < 1:
        raise DataError(f"resolution must be a positive number of pixels, got {resolution}")
    split = canonical_split(split)
    skipped: list[tuple[str, str]] = []

    def report(key: str, message: str) -> None:
        if not skip_bad:
            raise DataError(message)
        skipped.append((key, message))

    kind, entries = list_entries(source, split, report, all_captions=all_captions)

    # Decode every file once (several captions may share one image under all_captions).
    unique = list(dict.fromkeys(e.path for e in entries))
    in_memory = validate and len(unique) * resolution * resolution * 3 <= max_memory_bytes
    results = _decode_all(unique, resolution, validate, in_memory, split, progress)
    keep = []
    for e in entries:
        digest, _, problem = results[e.path]
        if problem is not None:
            report(
                e.key,
                f"{e.path}: {problem}; replace the file or remove it from {e.origin}, {SKIP_HINT}",
            )
        else:
            keep.append(e)
    if not keep:
        extra = f" ({_entries(len(skipped))} skipped; first: {skipped[0][1]})" if skipped else ""
        raise DataError(
            f"{source}: split {split!r} has no usable image-caption pairs{extra}; add images and captions"
        )
    if skipped:
        warnings.warn(
            f"{source} [{split}]: skipped {_entries(len(skipped))} "
            f"(kept {len(keep)}); first: {skipped[0][1]}; see dataset.skipped for all",
            stacklevel=2,
        )
    pixels = None
    if in_memory:
        pixels = np.stack([results[e.path][1] for e in keep])
    return ImageCaptionDataset(
        keys=[e.key for e in keep],
        paths=[e.path for e in keep],
        captions=[e.caption for e in keep],
        attributes=[e.attributes for e in keep],
        file_hashes=[results[e.path][0] for e in keep],
        resolution=resolution,
        pixels=pixels,
        skipped=skipped,
        source=str(source),
        split=split,
        kind=kind,
    )
