"""Probe network for the ``shapes`` dataset: attribute read-out and FD-probe features.

A small CNN, trained on real ``shapes`` images, predicts for each of the four quadrant
positions the object's shape, colour and size, each with an extra ``"empty"`` class
(``shapes`` puts at most one object per quadrant). It gives

- **FD-probe**: the Fréchet distance on its penultimate features (``feature_dim``-d); a
  cheap distribution metric for CPU studies. It is *not* FID and must not be called FID;
  values are only comparable between runs that used the same probe (same fingerprint).
- **text alignment** (see :mod:`ldmscale.metrics.alignment`): do the predicted objects match
  the caption's?

Input convention: uint8 RGB ``[B, H, W, 3]``; images not at the probe's resolution are resized
to it (bilinear, antialiased), then mapped to ``x / 127.5 - 1``.
The probe is saved as ``probe.safetensors`` + ``probe.json`` (config, vocabulary, training
data fingerprint, held-out accuracy) and cached under a key naming the dataset fingerprint.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ldmscale.config import Config
from ldmscale.io import atomic_path, atomic_write_json, hash_json, sha256_file
from ldmscale.metrics.common import ImageBatches, MetricsError, iter_batches, to_float_nchw
from ldmscale.progress import show_bar

PROBE_FORMAT = "ldmscale-probe/1"
ATTRS = ("shape", "color", "size")
EMPTY = "empty"


@dataclasses.dataclass
class ProbeConfig(Config):
    """Probe training settings.

    ``resolution``: input side in px, a multiple of 8; None = the dataset's own resolution
    (from its ``dataset.json``, else 32). ``steps``: optimiser steps of ``batch_size`` images
    (a fixed budget, so small datasets get more epochs). ``max_train``: use at most this many
    train images.
    """

    resolution: int | None = None
    width: int = 32
    feature_dim: int = 256
    steps: int = 600
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    max_train: int | None = None


def _build_net(cfg: ProbeConfig, n_out: int) -> Any:
    import torch.nn as nn

    if cfg.resolution % 8:
        raise MetricsError(f"probe resolution must be a multiple of 8, got {cfg.resolution}")
    w = cfg.width

    def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    side = cfg.resolution // 8
    body = nn.Sequential(
        *block(3, w, 1),
        *block(w, w, 2),
        *block(w, 2 * w, 2),
        *block(2 * w, 2 * w, 1),
        *block(2 * w, 4 * w, 2),
        nn.Flatten(),
        nn.Linear(4 * w * side * side, cfg.feature_dim),
        nn.ReLU(),
    )
    return nn.ModuleDict({"body": body, "head": nn.Linear(cfg.feature_dim, n_out)})


class Probe:
    """A trained probe. Also a feature extractor (``name="probe"``) for FD-probe."""

    name = "probe"

    def __init__(
        self, net: Any, cfg: ProbeConfig, vocab: dict[str, list[str]], info: dict[str, Any]
    ) -> None:
        self.net = net.eval()
        self.cfg = cfg
        self.vocab = {k: list(v) for k, v in vocab.items()}
        self.positions = self.vocab["position"]
        self.classes = {a: [EMPTY, *self.vocab[a]] for a in ATTRS}
        self.info = info
        self.dim = cfg.feature_dim

    def fingerprint(self) -> str:
        return f"probe:{self.info.get('weights_sha256', '?')[:16]}:{self.cfg.resolution}"

    def _input(self, batch: np.ndarray) -> Any:
        import torch.nn.functional as F

        x = to_float_nchw(batch)
        r = self.cfg.resolution
        if x.shape[-2:] != (r, r):
            x = F.interpolate(x, (r, r), mode="bilinear", align_corners=False, antialias=True)
        return x / 127.5 - 1.0

    def _forward(self, batch: np.ndarray) -> tuple[Any, Any]:
        import torch

        with torch.inference_mode():
            f = self.net["body"](self._input(batch))
            return f, self.net["head"](f)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Penultimate features ``[B, feature_dim]`` (float64) of uint8 images."""
        return self._forward(batch)[0].double().numpy()

    def logits(self, batch: np.ndarray) -> dict[str, Any]:
        """Per-attribute logits ``{attr: [B, n_positions, n_classes]}``."""
        return split_logits(self._forward(batch)[1], len(self.positions), self.classes)

    def predict_labels(self, images: ImageBatches, batch_size: int = 256) -> np.ndarray:
        """Class indices ``[N, n_positions, 3]`` (0 = empty; order shape, colour, size)."""
        out = []
        for b in iter_batches(images, batch_size):
            lg = self.logits(b)
            out.append(np.stack([lg[a].argmax(-1).numpy() for a in ATTRS], -1))
        return np.concatenate(out)

    def predict(self, images: ImageBatches, batch_size: int = 256) -> list[list[dict[str, str]]]:
        """Predicted objects per image: ``[{"shape", "color", "size", "position"}, ...]``.

        A position holds an object when its predicted shape is not ``empty``.
        """
        return [
            labels_to_objects(lab, self.classes, self.positions)
            for lab in self.predict_labels(images, batch_size)
        ]

    def save(self, out_dir: str | Path) -> Path:
        """Write ``probe.safetensors`` and ``probe.json`` into ``out_dir`` (atomically)."""
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.net.state_dict().items()}
        with atomic_path(out_dir / "probe.safetensors") as tmp:
            save_file(state, str(tmp))
        self.info["weights_sha256"] = sha256_file(out_dir / "probe.safetensors")
        meta = {
            "format": PROBE_FORMAT,
            "config": self.cfg.to_dict(),
            "vocab": self.vocab,
            **self.info,
        }
        atomic_write_json(out_dir / "probe.json", meta)
        return out_dir


def split_logits(logits: Any, n_pos: int, classes: dict[str, list[str]]) -> dict[str, Any]:
    sizes = [len(classes[a]) for a in ATTRS]
    parts = logits.reshape(len(logits), n_pos, sum(sizes)).split(sizes, dim=-1)
    return dict(zip(ATTRS, parts))


def labels_to_objects(
    labels: np.ndarray, classes: dict[str, list[str]], positions: list[str]
) -> list[dict[str, str]]:
    objs = []
    for p, lab in enumerate(labels):
        if lab[0] == 0:
            continue
        objs.append(
            {a: classes[a][int(i)] for a, i in zip(ATTRS, lab)} | {"position": positions[p]}
        )
    return objs


def encode_attributes(
    attributes: dict[str, Any] | list[dict[str, Any]], vocab: dict[str, list[str]]
) -> np.ndarray:
    """Ground-truth labels ``[n_positions, 3]`` of one image's ``attributes`` (0 = empty)."""
    objects = attributes.get("objects", []) if isinstance(attributes, dict) else attributes
    lab = np.zeros((len(vocab["position"]), len(ATTRS)), np.int64)
    for o in objects:
        try:
            p = vocab["position"].index(o["position"])
            idx = [vocab[a].index(o[a]) + 1 for a in ATTRS]
        except (KeyError, ValueError) as e:
            raise MetricsError(
                f"object {o} does not fit the shapes vocabulary {vocab}: {e}; the probe needs "
                "shapes-style attributes (shape, color, size, position)"
            ) from e
        if lab[p, 0]:
            raise MetricsError(
                f"two objects at position {o['position']!r}; the probe needs one per position"
            )
        lab[p] = idx
    return lab


def _dataset_info(source: str | Path) -> dict[str, Any]:
    info_path = Path(source) / "dataset.json"
    return json.loads(info_path.read_text()) if info_path.is_file() else {}


def _dataset_vocab(source: str | Path) -> dict[str, list[str]]:
    vocab = _dataset_info(source).get("vocabulary")
    if vocab:
        return vocab
    from ldmscale.data.shapes import VOCAB

    return VOCAB


def resolve_config(source: str | Path, cfg: ProbeConfig | None) -> ProbeConfig:
    """``cfg`` with ``resolution`` filled in from the dataset (its ``dataset.json``, else 32)."""
    cfg = cfg or ProbeConfig()
    if cfg.resolution is None:
        cfg = cfg.replace(resolution=int(_dataset_info(source).get("resolution", 32)))
    return cfg


def _load_split(
    source: Path, split: str, cfg: ProbeConfig, vocab: dict[str, list[str]], limit: int | None
):
    from ldmscale.data import load_dataset

    ds = load_dataset(source, split=split, resolution=cfg.resolution)
    n = len(ds) if limit is None else min(limit, len(ds))
    if any(a is None for a in ds.attributes[:n]):
        raise MetricsError(
            f"{source} ({split}) has images without `attributes`; the probe trains only on "
            "shapes-style data (generate it with `ldmscale data shapes`)"
        )
    labels = np.stack([encode_attributes(a, vocab) for a in ds.attributes[:n]])
    return ds.images_uint8(list(range(n))), labels, ds.fingerprint()


def evaluate_labels(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Accuracies of predicted vs true labels ``[N, P, 3]``.

    ``attribute_accuracy``: every (image, position, attribute) label incl. ``empty``;
    ``object_accuracy``: true objects whose shape, colour and size are all right;
    ``image_accuracy``: images whose whole predicted object set is right.
    """
    occupied = true[..., 0] > 0
    return {
        "attribute_accuracy": float((pred == true).mean()),
        "object_accuracy": float((pred == true).all(-1)[occupied].mean()),
        "image_accuracy": float((pred == true).all((-1, -2)).mean()),
    }


def _fit(
    net: Any,
    xt: Any,
    yt: Any,
    cfg: ProbeConfig,
    n_pos: int,
    classes: dict[str, list[str]],
    progress: bool,
) -> None:
    """AdamW + one-cycle LR, summed cross-entropy over positions and attributes."""
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    net.train()
    bar = tqdm(total=cfg.steps, desc="probe", unit="step", disable=not show_bar(progress))
    step = 0
    while step < cfg.steps:
        order = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), cfg.batch_size):
            if step == cfg.steps:
                break
            step += 1
            idx = order[i : i + cfg.batch_size]
            lg = split_logits(net["head"](net["body"](xt[idx])), n_pos, classes)
            loss = sum(
                F.cross_entropy(lg[a].reshape(-1, lg[a].shape[-1]), yt[idx][..., k].reshape(-1))
                for k, a in enumerate(ATTRS)
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    net.eval()


def train_probe(
    source: str | Path,
    out_dir: str | Path,
    cfg: ProbeConfig | None = None,
    progress: bool = True,
) -> Probe:
    """Train the probe on ``source``'s train split, evaluate it on its validation split, save it.

    ``source`` is a shapes dataset folder (images with ``attributes``). The held-out
    accuracies are stored in ``probe.json`` under ``"validation"``.
    """
    import torch

    cfg = resolve_config(source, cfg)
    source = Path(source)
    vocab = _dataset_vocab(source)
    x_train, y_train, fp_train = _load_split(source, "train", cfg, vocab, cfg.max_train)
    x_val, y_val, fp_val = _load_split(source, "validation", cfg, vocab, None)
    classes = {a: [EMPTY, *vocab[a]] for a in ATTRS}
    n_pos = len(vocab["position"])
    torch.manual_seed(cfg.seed)
    net = _build_net(cfg, n_pos * sum(len(c) for c in classes.values()))
    probe = Probe(net, cfg, vocab, {"dataset": {"train": fp_train, "validation": fp_val}})

    xt = probe._input(x_train)
    yt = torch.from_numpy(y_train)
    t0 = time.time()
    # Small convolutions gain little from intra-op threads, and on a shared machine extra
    # threads make them many times slower: train on one thread, restore the setting after.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _fit(net, xt, yt, cfg, n_pos, classes, progress)
    finally:
        torch.set_num_threads(threads)
    probe.info["train_seconds"] = round(time.time() - t0, 1)
    probe.info["n_train"] = len(xt)
    probe.info["n_validation"] = len(x_val)
    probe.info["validation"] = evaluate_labels(probe.predict_labels(x_val), y_val)
    probe.save(out_dir)
    return probe


def load_probe(path: str | Path) -> Probe:
    """Load a probe folder written by :func:`train_probe`."""
    from safetensors.torch import load_file

    path = Path(path)
    meta_path, weights = path / "probe.json", path / "probe.safetensors"
    if not meta_path.is_file() or not weights.is_file():
        raise MetricsError(
            f"{path} is not a probe folder (needs probe.json and probe.safetensors); "
            "train one with `ldmscale metrics train-probe --data DATA --out DIR`"
        )
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != PROBE_FORMAT:
        raise MetricsError(f"{meta_path}: format {meta.get('format')!r}, expected {PROBE_FORMAT!r}")
    cfg = ProbeConfig.from_dict(meta.pop("config"))
    vocab = meta.pop("vocab")
    meta.pop("format")
    classes = {a: [EMPTY, *vocab[a]] for a in ATTRS}
    net = _build_net(cfg, len(vocab["position"]) * sum(len(c) for c in classes.values()))
    net.load_state_dict(load_file(str(weights)))
    return Probe(net, cfg, vocab, meta)


def probe_for_dataset(
    source: str | Path,
    cfg: ProbeConfig | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> Probe:
    """The probe for a shapes dataset, trained once and cached.

    Cache key: the train and validation splits' fingerprints and the probe config; folder
    ``<cache_dir>/probes/<key>/`` (default cache dir as for reference statistics).
    """
    from ldmscale.data import load_dataset
    from ldmscale.metrics.reference import default_cache_dir

    cfg = resolve_config(source, cfg)
    fps = {
        s: load_dataset(source, split=s, resolution=cfg.resolution, validate=False).fingerprint()
        for s in ("train", "validation")
    }
    key = hash_json({"format": PROBE_FORMAT, "dataset": fps, "config": cfg.to_dict()})
    folder = Path(cache_dir or default_cache_dir()) / "probes" / key
    if (folder / "probe.json").is_file() and (folder / "probe.safetensors").is_file():
        return load_probe(folder)
    return train_probe(source, folder, cfg, progress)
