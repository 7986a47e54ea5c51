"""DreamBooth metrics: subject fidelity, prompt fidelity and prior drift, per image (for
paired bootstraps between a parent and its fine-tune, which share prompts and seeds).

On the shapes subject (:mod:`ldmscale.data.subject`, probe :mod:`ldmscale.metrics.subject`):

- ``subject``: the identifier prompts at the *held-out* positions; hit = a ring at the
  prompted position (subject fidelity).
- ``prompt``: the same images; hit = the shapes probe reads the prompt's other attributes
  (colour and size) at the prompted position (prompt fidelity; the shape is the subject's own
  and is read by the subject probe instead).
- ``leak``: the class prompts (no identifier); hit = a ring anywhere (the subject leaking into
  its class: prior drift; lower is better).
- ``general``: ordinary validation captions; hit = text alignment (the probe reads every
  object of the caption; general quality, before vs after).

For a user's own subject (any images): ``feature_similarity`` (mean cosine of each sample's
features to the subject images' mean feature; EfficientNet-Lite0 by default, CLIP image
features when a CLIP model is given) and CLIP score when CLIP is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ldmscale.data.subject import PLACEHOLDER
from ldmscale.metrics.bootstrap import bootstrap_ci
from ldmscale.metrics.subject import leak_hits, subject_hits

#: The prompt sets and what a hit means (see the module docstring).
SETS = ("subject", "prompt", "leak", "general")


@dataclass
class PromptSets:
    """The prompts of one evaluation, ``n_per_prompt`` images each, seeds ``seed0 + j``."""

    subject: list[str]  # identifier prompts at held-out positions (with {identifier})
    classes: list[str]
    general: list[str]  # one image each
    positions: list[str]  # the subject prompts' positions
    n_per_prompt: int = 16
    seed0: int = 0

    def expand(
        self, prompts: Sequence[str], identifier: str = "", n: int | None = None
    ) -> tuple[list[str], list[int]]:
        """Per-image prompts (``{identifier}`` filled in) and seeds, ``n`` per prompt."""
        n = self.n_per_prompt if n is None else n
        out = [p.replace(PLACEHOLDER, identifier) for p in prompts for _ in range(n)]
        return out, [self.seed0 + j for j in range(len(out))]


def shapes_prompt_sets(
    info: dict[str, Any], general: Sequence[str], n_per_prompt: int, seed0: int = 0
) -> PromptSets:
    """The prompt sets of the shapes subject's ``subject.json`` ``info``."""
    held = list(info["heldout_prompts"])
    positions = [p.rsplit(" at the ", 1)[1] for p in held]
    return PromptSets(
        held, list(info["class_prompts"]), list(general), positions, n_per_prompt, seed0
    )


def _prompt_hits(probe: Any, images: np.ndarray, attrs: dict[str, str], positions: list[str]):
    objects = probe.predict(images)
    hits = []
    for objs, pos in zip(objects, positions, strict=True):
        at = [o for o in objs if o["position"] == pos]
        hits.append(bool(at) and all(at[0][k] == v for k, v in attrs.items()))
    return np.array(hits)


def evaluate_shapes(
    model: Any,
    sets: PromptSets,
    identifier: str,
    probe: Any,
    sampler: Any,
    subject_attrs: dict[str, str],
    batch_size: int = 64,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per-image hits ``{set: bool [N]}`` of ``model`` and the subject-prompt images."""
    from ldmscale.metrics.alignment import text_alignment
    from ldmscale.sampling import generate

    def draw(prompts: Sequence[str], ident: str = "", n: int | None = None):
        ps, seeds = sets.expand(prompts, ident, n)
        res = generate(model, ps, seeds, sampler, batch_size=batch_size, progress=False)
        return res.images, ps

    subj, _ = draw(sets.subject, identifier)
    pos = [p for p in sets.positions for _ in range(sets.n_per_prompt)]
    attrs = {k: subject_attrs[k] for k in ("color", "size")}
    cls, _ = draw(sets.classes)
    hits = {
        "subject": subject_hits(subj, pos),
        "prompt": _prompt_hits(probe, subj, attrs, pos),
        "leak": leak_hits(cls),
    }
    if sets.general:  # one image per validation caption
        gen, gen_prompts = draw(sets.general, n=1)
        hits["general"] = text_alignment(gen, probe, captions=gen_prompts).hits.astype(bool)
    return hits, {"subject": subj, "class": cls}


def summarize(hits: dict[str, np.ndarray], n_boot: int = 1000) -> dict[str, dict[str, float]]:
    """Rate and 95% bootstrap CI of every set's hits."""
    out = {}
    for name, h in hits.items():
        ci = bootstrap_ci(np.asarray(h, float), n_boot=n_boot)
        out[name] = {"rate": ci.estimate, "low": ci.low, "high": ci.high, "n": int(len(h))}
    return out


def feature_similarity(features: np.ndarray, subject_features: np.ndarray) -> np.ndarray:
    """Per sample: cosine of its feature to the subject images' mean feature ``[N]``."""
    f = features / np.linalg.norm(features, axis=1, keepdims=True).clip(1e-12)
    s = subject_features / np.linalg.norm(subject_features, axis=1, keepdims=True).clip(1e-12)
    centre = s.mean(0)
    centre = centre / max(np.linalg.norm(centre), 1e-12)
    return f @ centre


def image_features(images: np.ndarray, clip_model: str | None = None) -> np.ndarray:
    """EfficientNet-Lite0 pooled features ``[N, 1280]`` of uint8 images ``[N, H, W, 3]``, or
    CLIP image embeddings when ``clip_model`` (a local CLIP folder) is given."""
    if clip_model:
        import torch

        from ldmscale.metrics.clip_score import load_clip

        model, processor = load_clip(clip_model)
        with torch.inference_mode():
            inputs = processor(images=list(images), return_tensors="pt")
            pooled = model.vision_model(pixel_values=inputs["pixel_values"]).pooler_output
            return model.visual_projection(pooled).double().numpy()
    from ldmscale.metrics.effnet import EffNetFeatures

    return EffNetFeatures()(np.asarray(images))


def evaluate_folder(
    samples: np.ndarray,
    prompts: Sequence[str],
    subject_images: np.ndarray,
    clip_model: str | None = None,
) -> dict[str, np.ndarray]:
    """Per-sample rows for a user's own subject: ``similarity`` (feature cosine to the
    subject images) and, with CLIP, ``clip_score`` (prompt fidelity)."""
    from ldmscale.metrics.clip_score import clip_score

    sim = feature_similarity(
        image_features(samples, clip_model), image_features(subject_images, clip_model)
    )
    out = {"similarity": sim}
    if clip_model:
        out["clip_score"] = clip_score(samples, list(prompts), clip_model).per_image
    return out


def score_subject_folder(
    model_dir: str,
    subject_dir: str,
    prompts: Sequence[str],
    identifier: str,
    n_per_prompt: int = 8,
    sampler: Any = None,
    clip_model: str | None = None,
    n_boot: int = 1000,
) -> dict[str, Any]:
    """Sample ``prompts`` (``{identifier}`` filled in) from a fine-tuned model and score them
    against the subject folder's images: mean feature similarity (and CLIP score with
    ``clip_model``) with 95% bootstrap CIs. Works for any subject folder."""
    from pathlib import Path

    from PIL import Image

    from ldmscale.dreambooth import IMAGE_SUFFIXES
    from ldmscale.model import load_model
    from ldmscale.sampling import SamplerConfig, generate

    model = load_model(model_dir)
    side = model.latent_shape[1] * 2 ** (len(model.vae.config.block_out_channels) - 1)
    files = sorted(p for p in Path(subject_dir).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    subject = np.stack(
        [np.asarray(Image.open(p).convert("RGB").resize((side, side))) for p in files]
    )
    ps = [p.replace(PLACEHOLDER, identifier) for p in prompts for _ in range(n_per_prompt)]
    sampler = sampler or SamplerConfig()
    res = generate(model, ps, list(range(len(ps))), sampler, progress=False)
    rows = evaluate_folder(res.images, ps, subject, clip_model)
    out: dict[str, Any] = {"n": len(ps), "network": "clip" if clip_model else "effnet"}
    for name, v in rows.items():
        ci = bootstrap_ci(np.asarray(v, float), n_boot=n_boot)
        out[name] = {"mean": ci.estimate, "low": ci.low, "high": ci.high}
    return out
