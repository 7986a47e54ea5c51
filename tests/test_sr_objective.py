"""The super-resolution objective (ldmscale.objectives.sr) and its function-preserving start."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import surgery_base_spec
from ldmscale.config import ConfigError
from ldmscale.data.degrade import DegradeConfig, degrade
from ldmscale.data.shapes import make_example
from ldmscale.modelfolder import ModelMeta, read_model_meta
from ldmscale.objectives import OBJECTIVES, SuperResolution, make_noise_scheduler
from ldmscale.objectives.sr import NUM_NOISE_LEVELS, make_low_res_scheduler
from ldmscale.surgery import grow_unet
from ldmscale.train import TrainConfig

BASE = surgery_base_spec()


@pytest.fixture(scope="module")
def parent(random_parent_unet) -> torch.nn.Module:
    return random_parent_unet


def _objective(**kw) -> SuperResolution:
    g = torch.Generator().manual_seed(7)
    defaults = dict(
        scheduler=make_noise_scheduler(),
        degradation=DegradeConfig.shapes32(),
        null_embedding=torch.randn(1, BASE.context_len, BASE.context_dim, generator=g),
        scaling_factor=0.5,
    )
    return SuperResolution(**{**defaults, **kw})


def _batch(n: int = 3, hr_px: int = 32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    hr = np.stack([np.asarray(make_example(0, "train", i, hr_px)[0]) for i in range(n)])
    return {
        "latent_mean": torch.randn(n, 4, 8, 8, generator=g),
        "latent_std": torch.rand(n, 4, 8, 8, generator=g) * 0.1,
        "embeddings": torch.randn(n, BASE.context_len, BASE.context_dim, generator=g),
        "hr_uint8": torch.from_numpy(hr),
    }


def test_grown_sr_model_equals_its_parent_for_any_low_res_input(parent):
    spec = BASE.replace(**_objective().unet_overrides())
    child = grow_unet(parent, spec).eval()
    assert child.conv_in.in_channels == 7 and child.config.num_class_embeds == NUM_NOISE_LEVELS
    g = torch.Generator().manual_seed(11)
    x = torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([5, 400, 999])
    ctx = torch.randn(3, BASE.context_len, BASE.context_dim, generator=g)
    with torch.no_grad():
        want = parent(x, t, encoder_hidden_states=ctx).sample
        for scale in (0.0, 1.0, 30.0):
            lr = torch.randn(3, 3, 8, 8, generator=g) * scale
            level = torch.randint(0, NUM_NOISE_LEVELS, (3,), generator=g)
            got = child(torch.cat([x, lr], 1), t, encoder_hidden_states=ctx, class_labels=level)
            torch.testing.assert_close(got.sample, want, rtol=0, atol=1e-6)


def test_loss_is_seeded_and_trains_the_new_inputs(parent):
    child = grow_unet(parent, BASE.replace(**_objective().unet_overrides()))
    obj, batch = _objective(), _batch()
    a = obj.loss(child, batch, torch.Generator().manual_seed(1))
    assert torch.isfinite(a) and a.item() > 0
    assert obj.loss(child, batch, torch.Generator().manual_seed(1)).item() == a.item()
    assert obj.loss(child, batch, torch.Generator().manual_seed(2)).item() != a.item()
    a.backward()
    # The zero-initialised LR channels and class embedding get a gradient: they can learn.
    assert child.conv_in.weight.grad[:, 4:].abs().sum() > 0
    assert child.class_embedding.weight.grad.abs().sum() > 0


def test_low_res_is_the_per_row_degradation():
    obj, batch = _objective(), _batch()
    seeds = torch.tensor([4, 9, 2**40])
    lr = obj.low_res(batch["hr_uint8"], seeds)
    assert lr.shape == (3, 3, 8, 8) and lr.min() >= -1 and lr.max() <= 1
    one = degrade(batch["hr_uint8"][1], obj.degradation, torch.Generator().manual_seed(9))
    torch.testing.assert_close(lr[1], one.permute(2, 0, 1).float() / 127.5 - 1)


def test_text_is_off_by_default_and_on_as_an_option(parent):
    child = grow_unet(parent, BASE.replace(**_objective().unet_overrides()))
    batch = _batch()
    other = {**batch, "embeddings": batch["embeddings"] + 1.0}

    def loss(obj, b):
        with torch.no_grad():
            return obj.loss(child, b, torch.Generator().manual_seed(5)).item()

    off = _objective()
    assert loss(off, batch) == loss(off, other)
    on = _objective(text=True, caption_dropout=0.0)
    assert loss(on, batch) != loss(on, other)


def test_low_res_schedule_and_noise_levels():
    s = make_low_res_scheduler()
    assert s.config.num_train_timesteps == NUM_NOISE_LEVELS
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    # sqrt-linear betas (LDM's "linear", diffusers' "scaled_linear"), checked from the formula.
    betas = np.linspace(1e-4**0.5, 0.02**0.5, NUM_NOISE_LEVELS) ** 2
    np.testing.assert_allclose(s.betas.numpy(), betas, rtol=1e-5)
    abar = np.cumprod(1 - betas)
    assert s.alphas_cumprod[349].item() == pytest.approx(abar[349], rel=1e-4)


def test_build_reads_options_and_refuses_bad_ones():
    cfg = TrainConfig(objective="sr", objective_options={"max_noise_level": 100, "text": True})
    obj = OBJECTIVES["sr"](cfg)
    assert (obj.max_noise_level, obj.text, obj.export_hints().task) == (100, True, "sr")
    assert obj.degradation == DegradeConfig.shapes32()
    for bad, match in (
        ({"degradation": "nope"}, "degradation must be one of"),
        ({"max_noise_level": 5000}, "max_noise_level"),
        ({"noise": 3}, "unknown key"),
    ):
        with pytest.raises(ConfigError, match=match):
            OBJECTIVES["sr"](TrainConfig(objective="sr", objective_options=bad))


def test_hr_images_of_the_wrong_size_get_a_clear_error(parent):
    child = grow_unet(parent, BASE.replace(**_objective().unet_overrides()))
    with pytest.raises(ValueError, match="HR images must be 4 x the latent size"):
        _objective().loss(child, _batch(hr_px=16), torch.Generator().manual_seed(0))


def test_trainer_trains_sr_from_a_dataset_and_exports_an_sr_model(sr_run, tmp_path):
    """The one trainer feeds the HR images (hr_uint8) to the objective."""
    import json

    from ldmscale.train import train

    cfg, run, _ = sr_run
    info = json.loads((run / "model" / "ldmscale_model.json").read_text())
    assert info["task"] == "sr" and info["unet_spec"]["latent_size"] == 8
    assert info["unet_spec"]["extra_in_channels"] == 3
    assert info["unet_spec"]["num_class_embeds"] == NUM_NOISE_LEVELS
    assert info["sr"]["scale"] == 4 and info["sr"]["max_noise_level"] == 350
    assert info["sr"]["noise_level"] == 20
    assert info["sr"]["low_res_schedule"]["beta_schedule"] == "scaled_linear"
    assert DegradeConfig.from_dict(info["sr"]["degradation"]) == DegradeConfig.shapes32()
    meta = read_model_meta(run / "model")
    assert meta.sr is not None and meta.sr.scale == 4
    unet_cfg = json.loads((run / "model" / "unet" / "config.json").read_text())
    assert (unet_cfg["in_channels"], unet_cfg["out_channels"]) == (7, 4)
    # Without the dataset (cache files only) the HR images are missing: a clear error.
    caches = sorted((run / "cache").glob("*.safetensors"))
    lat = next(p for p in caches if "lat" in p.name)
    emb = next(p for p in caches if p != lat)
    no_data = cfg.replace(
        run_dir=str(tmp_path / "run2"), data=None, latents=str(lat), embeddings=str(emb)
    )
    with pytest.raises(ConfigError, match="set TrainConfig.data to the dataset folder"):
        train(no_data, progress=False)


def test_model_meta_has_no_sr_entry_unless_it_is_an_sr_model(parent):
    hints = _objective().export_hints()
    assert hints.task == "sr" and hints.sr["low_res_schedule"]["num_train_timesteps"] == 1000
    fields = dict(unet_spec=BASE, text_encoder={"kind": "minilm"}, scaling_factor=0.5)
    t2i = ModelMeta.from_dict({**fields, "unet_spec": BASE.to_dict()})
    assert "sr" not in t2i.to_dict()  # t2i folders' json (and hashes) are unchanged
    sr = ModelMeta.from_dict({**t2i.to_dict(), "task": "sr", "sr": hints.sr})
    assert ModelMeta.from_dict(sr.to_dict()) == sr and sr.sr.noise_level == 20


def test_upscale_samples_an_sr_model_per_image_seeded(sr_run):
    from ldmscale.model import load_model
    from ldmscale.sampling import SamplerConfig, SamplingError
    from ldmscale.upscale import upscale

    model = load_model(sr_run[1] / "model")
    hr = _batch(n=3)["hr_uint8"]
    lr = degrade(hr, DegradeConfig.shapes32(), [torch.Generator().manual_seed(i) for i in range(3)])
    cfg = SamplerConfig(name="ddpm", steps=2, guidance=1.0)
    out = upscale(model, lr, [10, 11, 12], cfg, progress=False)
    assert out.images.shape == (3, 32, 32, 3) and out.images.dtype == np.uint8
    assert out.nfe == 2 and out.model_info["noise_level"] == 20
    one = upscale(model, lr[1:2], [11], cfg, batch_size=1, progress=False)
    assert np.array_equal(one.images[0], out.images[1])  # independent of the batch
    # Same random numbers; the batched convolutions differ only in float rounding.
    torch.testing.assert_close(one.latents[0], out.latents[1], rtol=0, atol=1e-5)
    other_level = upscale(model, lr[1:2], [11], cfg, noise_level=300, progress=False)
    assert (other_level.latents[0] - out.latents[1]).abs().max() > 1e-3
    other_lr = upscale(model, lr[0:1], [11], cfg, progress=False)  # the LR is an input
    assert (other_lr.latents[0] - out.latents[1]).abs().max() > 1e-3
    with pytest.raises(SamplingError, match=r"uint8 \[N, 8, 8, 3\]"):
        upscale(model, hr, [0, 1, 2], cfg, progress=False)  # HR given where LR is expected
    with pytest.raises(SamplingError, match="without classifier-free guidance"):
        upscale(model, lr, [0, 1, 2], cfg.replace(guidance=3.0), progress=False)
    with pytest.raises(SamplingError, match="noise_level must be in 0..349"):
        upscale(model, lr, [0, 1, 2], cfg, noise_level=350, progress=False)
