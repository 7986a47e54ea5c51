"""CLIP score: cosine similarity between CLIP image and text embeddings.

Reported raw (the paper's scale, ≈0.31 for good SD samples); ``scale=100`` gives the
"×100" convention some papers use. No clipping at zero. The CLIP model and processor are
loaded with transformers (``CLIPModel`` + ``CLIPProcessor``) from a *local* folder; nothing
is downloaded. Images go through the processor's own resize/crop/normalisation; captions are
truncated to the model's maximum text length.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ldmscale.metrics.common import ImageBatches, MetricsError, iter_batches


@dataclass(frozen=True)
class ClipScoreResult:
    """Mean CLIP score and the per-image values (both × ``scale``)."""

    mean: float
    per_image: np.ndarray
    scale: float


@functools.cache
def _load(path: str) -> tuple[Any, Any]:
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(path, local_files_only=True).eval()
    processor = CLIPProcessor.from_pretrained(path, local_files_only=True)
    return model, processor


def load_clip(path: str | Path | None) -> tuple[Any, Any]:
    """(CLIPModel, CLIPProcessor) from a local folder, cached per process."""
    if path is None:
        raise MetricsError(
            "CLIP score needs a local CLIP model folder (CLIPModel + processor saved with "
            "save_pretrained), e.g. --clip /models/clip-vit-large-patch14; nothing is downloaded"
        )
    p = Path(path).expanduser()
    if not (p / "config.json").is_file():
        raise MetricsError(
            f"{p} is not a CLIP model folder (no config.json); give the folder written by save_pretrained"
        )
    try:
        return _load(str(p.resolve()))
    except OSError as e:
        raise MetricsError(f"cannot load CLIP from {p}: {e}") from e


def clip_score(
    images: ImageBatches,
    captions: Sequence[str],
    clip_path: str | Path | None,
    batch_size: int = 32,
    scale: float = 1.0,
) -> ClipScoreResult:
    """Per-image cosine(CLIP image embedding, CLIP text embedding of its caption) × ``scale``."""
    import torch

    model, processor = load_clip(clip_path)
    max_len = int(model.config.text_config.max_position_embeddings)
    scores: list[np.ndarray] = []
    start = 0
    for batch in iter_batches(images, batch_size):
        caps = list(captions[start : start + len(batch)])
        if len(caps) != len(batch):
            raise MetricsError(
                f"more images than captions ({len(captions)}); give one caption per image"
            )
        start += len(batch)
        inputs = processor(
            text=caps,
            images=list(batch),
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=max_len,
        )
        with torch.inference_mode():
            out = model(**inputs)
        img = torch.nn.functional.normalize(out.image_embeds.float(), dim=-1)
        txt = torch.nn.functional.normalize(out.text_embeds.float(), dim=-1)
        scores.append((img * txt).sum(-1).double().numpy())
    if start != len(captions):
        raise MetricsError(
            f"{start} images but {len(captions)} captions; give one caption per image"
        )
    per = np.concatenate(scores) * scale
    return ClipScoreResult(float(per.mean()), per, scale)
