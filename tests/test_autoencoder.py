"""Stage-one autoencoder: training, scaling factor, save/load, PSNR, CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ldmscale.autoencoder import (
    AutoencoderConfig,
    AutoencoderError,
    build_autoencoder,
    load_autoencoder,
    psnr,
    read_training_record,
    reconstruction_psnr,
    train_autoencoder,
    vae_fingerprint,
)
from ldmscale.config import ConfigError
from ldmscale.data import load_dataset

TINY = dict(
    resolution=16,
    block_out_channels=(8, 16),
    norm_num_groups=8,
    steps=30,
    batch_size=16,
    lr=3e-3,
    val_images=16,
    scale_images=64,
)


@pytest.fixture(scope="module")
def train_ds(tiny_shapes):
    return load_dataset(tiny_shapes, split="train", resolution=16)


@pytest.fixture(scope="module")
def val_ds(tiny_shapes):
    return load_dataset(tiny_shapes, split="validation", resolution=16)


@pytest.fixture(scope="module")
def trained(train_ds, val_ds, tmp_path_factory):
    out = tmp_path_factory.mktemp("ae") / "vae"
    return train_autoencoder(train_ds, val_ds, AutoencoderConfig(**TINY), out, progress=False)


def test_config_geometry_and_validation():
    cfg = AutoencoderConfig()
    assert cfg.downsampling_factor == 4 and cfg.latent_size == 8  # 32 px -> 4 x 8 x 8
    assert AutoencoderConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="norm_num_groups"):
        AutoencoderConfig(block_out_channels=(12, 64))
    with pytest.raises(ConfigError, match="loss"):
        AutoencoderConfig(loss="lpips")
    with pytest.raises(ConfigError, match="not divisible"):
        AutoencoderConfig(resolution=30)


def test_training_lowers_loss_and_writes_record(trained):
    rec = read_training_record(trained)
    curve = rec["loss_curve"]
    assert rec["format"] == "ldmscale-autoencoder/1"
    assert rec["final_loss"] < 0.7 * curve[0]
    assert rec["val_psnr_db"] > 10.0
    assert rec["latent_shape"] == [4, 8, 8]
    assert (trained / "diffusion_pytorch_model.safetensors").is_file()
    assert not list(trained.parent.glob(".*.tmp"))  # the temporary folder is gone
    config = json.loads((trained / "config.json").read_text())
    assert config["_class_name"] == "AutoencoderKL"
    assert config["scaling_factor"] == pytest.approx(rec["scaling_factor"])


def test_scaling_factor_gives_unit_std_latents(trained, train_ds):
    vae = load_autoencoder(trained)
    x = torch.stack([train_ds[i].image for i in range(len(train_ds))])
    with torch.no_grad():
        z = vae.encode(x).latent_dist.sample(generator=torch.Generator().manual_seed(1))
    std = float((z * vae.config.scaling_factor).std())
    assert 0.85 < std < 1.15


def test_save_load_round_trip_reproduces_outputs(trained, val_ds):
    vae = load_autoencoder(trained)
    assert not vae.training and not any(p.requires_grad for p in vae.parameters())
    x = torch.stack([val_ds[i].image for i in range(4)])
    with torch.no_grad():
        a = vae.decode(vae.encode(x).latent_dist.mode()).sample
        vae2 = load_autoencoder(trained)
        b = vae2.decode(vae2.encode(x).latent_dist.mode()).sample
    assert torch.equal(a, b)
    assert vae_fingerprint(vae) == vae_fingerprint(vae2)
    rec = read_training_record(trained)
    assert reconstruction_psnr(vae, val_ds, max_images=16) == pytest.approx(rec["val_psnr_db"])


def test_load_accepts_pipeline_root_and_rejects_bad_folders(trained, tmp_path):
    pipe = tmp_path / "pipe"
    pipe.mkdir()
    (pipe / "vae").symlink_to(trained, target_is_directory=True)
    assert load_autoencoder(pipe).config.latent_channels == 4
    with pytest.raises(AutoencoderError, match="not found"):
        load_autoencoder(tmp_path / "missing")
    with pytest.raises(AutoencoderError, match="no config.json"):
        load_autoencoder(tmp_path)
    other = tmp_path / "unet"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(AutoencoderError, match="not an AutoencoderKL"):
        load_autoencoder(other)


def test_psnr_known_values():
    x = torch.zeros(2, 3, 4, 4)
    y = torch.zeros(2, 3, 4, 4)
    y[0] += 0.1  # MSE 0.01 -> 20 dB
    y[1] += 0.01  # MSE 1e-4 -> 40 dB
    assert psnr(y, x).tolist() == pytest.approx([20.0, 40.0])
    assert math.isinf(float(psnr(x, x)[0]))


def test_reconstruction_psnr_of_identity_like_vae(val_ds):
    """A fresh VAE reconstructs badly: PSNR is finite, low and uses only max_images records."""
    vae = build_autoencoder(AutoencoderConfig(**TINY)).eval()
    p = reconstruction_psnr(vae, val_ds, max_images=8)
    assert 0 < p < 20


def test_fingerprint_changes_with_weights():
    vae = build_autoencoder(AutoencoderConfig(**TINY))
    fp = vae_fingerprint(vae)
    with torch.no_grad():
        next(vae.parameters()).add_(1e-3)
    assert vae_fingerprint(vae) != fp


def test_resolution_mismatch_is_a_clear_error(train_ds, tmp_path):
    with pytest.raises(AutoencoderError, match="resolution"):
        train_autoencoder(train_ds, None, AutoencoderConfig(resolution=32), tmp_path / "x")


def test_existing_output_folder_is_protected(train_ds, trained, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(AutoencoderError, match="not an ldmscale autoencoder"):
        train_autoencoder(train_ds, None, AutoencoderConfig(**TINY), tmp_path, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    with pytest.raises(AutoencoderError, match="overwrite=True"):
        train_autoencoder(train_ds, None, AutoencoderConfig(**TINY), trained)


def test_cli_train_and_eval(tiny_shapes, tmp_path, capsys):
    from ldmscale.cli import main

    out = tmp_path / "vae"
    rc = main(
        ["autoencoder", "train", "--data", str(tiny_shapes), "--out", str(out), "--steps", "3",
         "--resolution", "16", "--block-out-channels", "8,8", "--norm-num-groups", "8",
         "--batch-size", "8", "--no-progress"]
    )  # fmt: skip
    assert rc == 0 and (out / "training.json").is_file()
    assert read_training_record(out)["config"]["steps"] == 3
    rc = main(["autoencoder", "eval", "--vae", str(out), "--data", str(tiny_shapes)])
    assert rc == 0
    assert "PSNR" in capsys.readouterr().out
    assert (
        main(["autoencoder", "eval", "--vae", str(tmp_path / "nope"), "--data", str(tiny_shapes)])
        == 2
    )
