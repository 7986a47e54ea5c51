"""The learning test: a tiny SR model, fine-tuned here, beats bicubic upsampling on the shapes
probe's attribute accuracy against the ground truth, by a seeded paired bootstrap."""

from __future__ import annotations

import time

import numpy as np
import pytest

#: SR fine-tuning steps (batch 16): about 25 s of the test's ~65 s on one core.
STEPS = 150


@pytest.mark.slow
def test_a_tiny_sr_model_beats_bicubic_on_attribute_accuracy(tmp_path):
    from ldmscale.autoencoder import AutoencoderConfig, train_autoencoder
    from ldmscale.data import load_dataset
    from ldmscale.data.degrade import DegradeConfig
    from ldmscale.data.shapes import generate_shapes
    from ldmscale.metrics import sr as srm
    from ldmscale.metrics.probe import ProbeConfig, probe_for_dataset
    from ldmscale.model import load_model
    from ldmscale.paired import paired_difference
    from ldmscale.sampling import SamplerConfig
    from ldmscale.sr_eval import baseline_images, lr_set_from_dataset
    from ldmscale.train import TrainConfig, train
    from ldmscale.upscale import upscale

    t0 = time.perf_counter()
    data = generate_shapes(tmp_path / "shapes", n_train=256, n_val=96, resolution=32, seed=0)
    ae = AutoencoderConfig(
        resolution=32,
        block_out_channels=(8, 8, 8),
        steps=100,
        lr=4e-3,
        loss="l1+l2",
        val_images=8,
        scale_images=64,
    )
    vae = train_autoencoder(
        load_dataset(data, "train", 32), None, ae, tmp_path / "vae", progress=False
    )
    # A random c = 8 SR model (the same as a random text-to-image parent grown by init_from).
    cfg = TrainConfig(
        run_dir=str(tmp_path / "sr"),
        c=8,
        layers_per_block=1,
        data=str(data),
        resolution=32,
        vae=str(vae),
        text_encoder={"kind": "minilm", "max_length": 8},
        steps=STEPS,
        batch_size=16,
        warmup_steps=10,
        lr=4e-3,
        ema_decay=0.9,
        prediction_type="v_prediction",
        objective="sr",
        checkpoint_every=10_000,
    )
    model = load_model(train(cfg, progress=False) / "model")
    lrset = lr_set_from_dataset(data, 96, 32, DegradeConfig.shapes32())
    out = upscale(model, lrset.lr, list(range(96)), SamplerConfig("ddim", 8, 1.0), progress=False)
    probe = probe_for_dataset(data, ProbeConfig(steps=100), cache_dir=tmp_path, progress=False)
    bicubic = baseline_images(lrset, 4)["bicubic"]
    sr_acc = srm.attribute_hits(out.images, lrset.attributes, probe)["attr_acc"]
    bi_acc = srm.attribute_hits(bicubic, lrset.attributes, probe)["attr_acc"]
    result = paired_difference(sr_acc, bi_acc, np.mean, n_boot=500, seed=0, direction="max")
    print(
        f"SR {sr_acc.mean():.3f} bicubic {bi_acc.mean():.3f} {result} {time.perf_counter() - t0:.0f} s"
    )
    assert result.outcome() == "a" and result.lo > 0.02
    assert srm.psnr(out.images, lrset.hr).mean() > srm.psnr(bicubic, lrset.hr).mean()
