"""Stage one: train a small KL-regularised ``AutoencoderKL``, or load one a user holds.

Images are float tensors in ``[-1, 1]``, shape ``[B, 3, H, W]`` (the library convention).
The autoencoder maps them to a latent ``[B, latent_channels, H/f, W/f]`` with downsampling
factor ``f = 2 ** (len(block_out_channels) - 1)``; the default (3 blocks) gives ``f = 4``,
so a 32 px image becomes a 4 x 8 x 8 latent.

Loss: reconstruction (L1, L2 or both, mean per pixel) plus ``kl_weight`` times the KL
divergence of the posterior to N(0, I). ``kl_weight`` uses Stable Diffusion's convention
(per-image sums of both terms, weight 1e-6); here both terms are divided by the number of
pixel values, which keeps that ratio. There is no perceptual (LPIPS) or adversarial loss:
LPIPS backbones cannot be fetched offline, so reconstructions are slightly blurrier than an
SD VAE's at the same compression.

The latent ``scaling_factor`` is set from data after training: ``1 / std`` of posterior
samples over training images, the rule that gave SD's 0.18215, so scaled latents have
roughly unit variance. It is stored in the saved diffusers config, where diffusers and the
trainer read it.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ldmscale.config import Config, ConfigError
from ldmscale.data.dataset import stack_images
from ldmscale.io import atomic_path, hash_json

TRAINING_JSON = "training.json"


class AutoencoderError(ValueError):
    """An autoencoder folder that cannot be used; the message says how to fix it."""


@dataclass
class AutoencoderConfig(Config):
    """Hyper-parameters of the stage-one autoencoder.

    resolution: image side in pixels the autoencoder is trained at.
    latent_channels: channels of the latent.
    block_out_channels: encoder/decoder widths; ``len - 1`` 2x downsamplings.
    layers_per_block: ResNet layers per encoder block (the decoder has one more, as diffusers).
    norm_num_groups: GroupNorm groups; must divide every width.
    steps, batch_size, lr: Adam steps, images per step, peak learning rate (cosine decay).
    loss: "l1", "l2" or "l1+l2" reconstruction loss, mean over pixel values.
    kl_weight: weight of the KL term in SD's per-image-sum convention (SD uses 1e-6).
    val_images: validation images used for the PSNR reported after training.
    scale_images: training images whose latents set ``scaling_factor``.
    mid_block_attention: self-attention in the mid block (diffusers default; off here: cheap AE).
    """

    resolution: int = 32
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (16, 32, 32)
    layers_per_block: int = 1
    norm_num_groups: int = 8
    steps: int = 800
    batch_size: int = 32
    lr: float = 2e-3
    loss: str = "l1"
    kl_weight: float = 1e-6
    seed: int = 0
    val_images: int = 512
    scale_images: int = 1024
    mid_block_attention: bool = False

    def __post_init__(self) -> None:
        if not self.block_out_channels:
            raise ConfigError("AutoencoderConfig.block_out_channels must not be empty")
        for w in self.block_out_channels:
            if w < 1 or w % self.norm_num_groups:
                raise ConfigError(
                    f"AutoencoderConfig: every width must be a positive multiple of "
                    f"norm_num_groups={self.norm_num_groups}, got {list(self.block_out_channels)}"
                )
        if self.resolution % self.downsampling_factor:
            raise ConfigError(
                f"AutoencoderConfig.resolution={self.resolution} is not divisible by the "
                f"downsampling factor {self.downsampling_factor}"
            )
        if self.loss not in ("l1", "l2", "l1+l2"):
            raise ConfigError(
                f"AutoencoderConfig.loss must be 'l1', 'l2' or 'l1+l2', got {self.loss!r}"
            )
        for name in ("latent_channels", "layers_per_block", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"AutoencoderConfig.{name} must be >= 1, got {getattr(self, name)}"
                )
        if self.lr <= 0 or self.kl_weight < 0:
            raise ConfigError("AutoencoderConfig: lr must be > 0 and kl_weight >= 0")

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def latent_size(self) -> int:
        return self.resolution // self.downsampling_factor


def build_autoencoder(cfg: AutoencoderConfig) -> Any:
    """A freshly initialised diffusers ``AutoencoderKL`` for ``cfg`` (seeded by ``cfg.seed``)."""
    from diffusers import AutoencoderKL

    n = len(cfg.block_out_channels)
    torch.manual_seed(cfg.seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups,
        sample_size=cfg.resolution,
        scaling_factor=1.0,
        force_upcast=False,
        mid_block_add_attention=cfg.mid_block_attention,
    )


def _image_batches(
    dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0, limit: int | None = None
) -> Iterator[torch.Tensor]:
    """Batches of images ``[B, 3, H, W]`` in [-1, 1] from a dataset of Records (one pass)."""
    n = len(dataset)  # type: ignore[arg-type]
    if limit is not None and limit < n:
        dataset = torch.utils.data.Subset(dataset, range(limit))
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, generator=gen, collate_fn=stack_images
    )
    yield from loader


def _forever(dataset: Dataset, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    epoch = 0
    while True:
        yield from _image_batches(dataset, batch_size, shuffle=True, seed=seed + epoch)
        epoch += 1


def _reconstruction_loss(x_hat: torch.Tensor, x: torch.Tensor, kind: str) -> torch.Tensor:
    loss = x_hat.new_zeros(())
    if "l1" in kind:
        loss = loss + (x_hat - x).abs().mean()
    if "l2" in kind:
        loss = loss + (x_hat - x).pow(2).mean()
    return loss


def _check_training_inputs(
    train_ds: Dataset, cfg: AutoencoderConfig, out_dir: str | Path, overwrite: bool
) -> Path:
    """The checks of :func:`train_autoencoder` before any training; returns ``out_dir``."""
    if len(train_ds) == 0:  # type: ignore[arg-type]
        raise AutoencoderError("train_autoencoder: the training dataset is empty")
    first = train_ds[0].image
    if tuple(first.shape[-2:]) != (cfg.resolution, cfg.resolution):
        raise AutoencoderError(
            f"train_autoencoder: images are {tuple(first.shape)}, but AutoencoderConfig.resolution="
            f"{cfg.resolution}; load the dataset at resolution={cfg.resolution} or change the config"
        )
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        if not (overwrite and (out_dir / TRAINING_JSON).is_file()):
            raise AutoencoderError(
                f"{out_dir} already exists"
                + (
                    "; pass overwrite=True (CLI: --overwrite) to replace this autoencoder"
                    if (out_dir / TRAINING_JSON).is_file()
                    else " and is not an ldmscale autoencoder folder; choose an empty or new folder"
                )
            )
    return out_dir


def _fit(train_ds: Dataset, cfg: AutoencoderConfig, progress: bool) -> tuple[Any, list[float]]:
    """Build and train the autoencoder (Adam, warm-up then cosine lr, KL-regularised
    reconstruction loss); returns it in eval mode and the per-step losses."""
    vae = build_autoencoder(cfg)
    vae.train()
    opt = torch.optim.Adam(vae.parameters(), lr=cfg.lr)
    warmup = min(100, cfg.steps // 10)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, cfg.steps - warmup)
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    batches = _forever(train_ds, cfg.batch_size, cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    losses: list[float] = []
    bar = tqdm(range(cfg.steps), desc="autoencoder", disable=not progress, dynamic_ncols=True)
    for step in bar:
        x = next(batches)
        posterior = vae.encode(x).latent_dist
        z = posterior.sample(generator=gen)
        x_hat = vae.decode(z).sample
        rec = _reconstruction_loss(x_hat, x, cfg.loss)
        kl = posterior.kl().mean() / x[0].numel()
        loss = rec + cfg.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 10 == 0 or step == cfg.steps - 1:
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
    vae.eval()
    return vae, losses


def train_autoencoder(
    train_ds: Dataset,
    val_ds: Dataset | None,
    cfg: AutoencoderConfig,
    out_dir: str | Path,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Train an ``AutoencoderKL`` on ``train_ds`` and save it (diffusers format) to ``out_dir``.

    Datasets yield Records with ``.image`` float ``[3, H, W]`` in [-1, 1] at ``cfg.resolution``.
    The folder is written atomically (a killed run leaves no complete-looking folder) and holds
    ``config.json`` (with the data-derived ``scaling_factor``), ``diffusion_pytorch_model.safetensors``
    and ``training.json`` = {config, val_psnr_db, scaling_factor, loss curve, seconds}.
    An existing non-empty ``out_dir`` is an error, unless ``overwrite`` and it is an earlier
    autoencoder folder of ours (has ``training.json``). Returns ``out_dir``.
    """
    out_dir = _check_training_inputs(train_ds, cfg, out_dir, overwrite)
    t0, cpu0 = time.time(), time.process_time()
    vae, losses = _fit(train_ds, cfg, progress)

    scaling_factor = estimate_scaling_factor(
        vae, train_ds, max_images=cfg.scale_images, seed=cfg.seed
    )
    vae.register_to_config(scaling_factor=scaling_factor)
    psnr = (
        reconstruction_psnr(vae, val_ds, max_images=cfg.val_images, progress=progress)
        if val_ds is not None and len(val_ds) > 0  # type: ignore[arg-type]
        else None
    )
    every = max(1, cfg.steps // 20)
    record = {
        "format": "ldmscale-autoencoder/1",
        "config": cfg.to_dict(),
        "val_psnr_db": psnr,
        "val_images": min(cfg.val_images, len(val_ds)) if val_ds is not None else 0,  # type: ignore[arg-type]
        "scaling_factor": scaling_factor,
        "downsampling_factor": cfg.downsampling_factor,
        "latent_shape": [cfg.latent_channels, cfg.latent_size, cfg.latent_size],
        "train_images": len(train_ds),  # type: ignore[arg-type]
        "final_loss": _mean(losses[-every:]),
        "loss_curve": [_mean(losses[i : i + every]) for i in range(0, len(losses), every)],
        "loss_curve_every": every,
        "seconds": round(time.time() - t0, 1),
        "cpu_seconds": round(time.process_time() - cpu0, 1),
        "torch_threads": torch.get_num_threads(),
    }
    with atomic_path(out_dir) as tmp:
        vae.save_pretrained(tmp, safe_serialization=True)
        (tmp / TRAINING_JSON).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return out_dir


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values))


@torch.no_grad()
def estimate_scaling_factor(
    vae: Any, dataset: Dataset, max_images: int = 1024, batch_size: int = 64, seed: int = 0
) -> float:
    """``1 / std`` of posterior samples ``mean + std * n`` over up to ``max_images`` images.

    The std is taken over every element of every latent (SD's rule, which gave 0.18215).
    """
    gen = torch.Generator().manual_seed(seed)
    samples = []
    for x in _image_batches(dataset, batch_size, shuffle=False, limit=max_images):
        samples.append(vae.encode(x).latent_dist.sample(generator=gen).flatten())
    z = torch.cat(samples).double()
    return float(1.0 / z.std())


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [0, 1], shape ``[B, C, H, W]`` -> ``[B]``.

    ``10 * log10(1 / MSE)``; identical images give ``inf``.
    """
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse)


@torch.no_grad()
def reconstruction_psnr(
    vae: Any,
    dataset: Dataset,
    max_images: int | None = 512,
    batch_size: int = 64,
    progress: bool = False,
) -> float:
    """Mean per-image PSNR (dB) of ``decode(posterior mean)`` against the input.

    Both images are mapped from [-1, 1] to [0, 1] and the reconstruction is clamped to it.
    Uses the first ``max_images`` records (all when None).
    """
    n = len(dataset) if max_images is None else min(max_images, len(dataset))  # type: ignore[arg-type]
    if n == 0:
        raise AutoencoderError("reconstruction_psnr: the dataset is empty")
    was_training = vae.training
    vae.eval()
    total, count = 0.0, 0
    for x in tqdm(
        _image_batches(dataset, batch_size, shuffle=False, limit=n),
        total=math.ceil(n / batch_size),
        desc="PSNR",
        disable=not progress,
    ):
        x_hat = vae.decode(vae.encode(x).latent_dist.mode()).sample
        p = psnr((x_hat.clamp(-1, 1) + 1) / 2, (x + 1) / 2)
        total += float(p.sum())
        count += len(p)
    vae.train(was_training)
    return total / count


def load_autoencoder(path: str | Path, device: str | torch.device = "cpu") -> Any:
    """Load an ``AutoencoderKL`` folder (ours or a user's, e.g. an SD VAE) from a local path.

    ``path`` is a diffusers ``AutoencoderKL`` folder (``config.json`` + weights) or a Stable
    Diffusion pipeline folder, whose ``vae/`` sub-folder is used. Nothing is downloaded.
    The model is returned in eval mode with gradients off.
    """
    from diffusers import AutoencoderKL

    path = Path(path)
    if not path.exists():
        raise AutoencoderError(
            f"autoencoder folder not found: {path}; train one with `ldmscale autoencoder train` "
            f"or pass the path of a diffusers AutoencoderKL folder"
        )
    if not (path / "config.json").is_file() and (path / "vae" / "config.json").is_file():
        path = path / "vae"
    config_file = path / "config.json"
    if not config_file.is_file():
        raise AutoencoderError(
            f"{path} is not a diffusers AutoencoderKL folder (no config.json); expected the output "
            f"of `ldmscale autoencoder train` or of AutoencoderKL.save_pretrained"
        )
    try:
        cls_name = json.loads(config_file.read_text()).get("_class_name")
    except json.JSONDecodeError as e:
        raise AutoencoderError(f"{config_file}: not valid JSON: {e}") from e
    if cls_name != "AutoencoderKL":
        raise AutoencoderError(
            f"{path} holds a {cls_name!r}, not an AutoencoderKL; ldmscale needs a KL autoencoder "
            f"(diffusers AutoencoderKL) folder"
        )
    try:
        vae = AutoencoderKL.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise AutoencoderError(f"could not load the AutoencoderKL in {path}: {e}") from e
    vae.requires_grad_(False)
    return vae.eval().to(device)


def vae_fingerprint(vae: Any) -> str:
    """Content hash of a VAE's weights and config (a cache key for its latents).

    Computed from the tensors in memory, so it identifies the weights however they were loaded
    (about 1 s for an SD-sized VAE on a CPU).
    """

    h = hashlib.sha256()
    for name, t in sorted(vae.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    config = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
    h.update(hash_json(config, length=64).encode())
    return h.hexdigest()


def read_training_record(path: str | Path) -> dict[str, Any] | None:
    """The ``training.json`` of a folder written by :func:`train_autoencoder` (None if absent)."""
    f = Path(path) / TRAINING_JSON
    return json.loads(f.read_text()) if f.is_file() else None


def latent_shape(vae: Any, resolution: int) -> Sequence[int]:
    """``(C, h, w)`` of the latent of a ``resolution`` px image."""
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    return (vae.config.latent_channels, resolution // f, resolution // f)
